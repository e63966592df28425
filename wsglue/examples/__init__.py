"""
Example handlers for wsglue (``--handler wsglue.examples.clock:Clock``).
"""
