"""
The wsglue benchmark: run it with C{python -m bench} (see C{bench/__main__.py}).
"""
