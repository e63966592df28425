"""
Profile every Python process started with this folder on C{PYTHONPATH}
and C{WSGLUE_BENCH_PROFILE} naming a folder: C{cProfile} from start-up to a
normal exit, written to C{<folder>/<pid>.prof}.  C{python -m bench.ingress
--profile DIR} starts the daemons so (their workers inherit the
environment); py-spy cannot read other processes on every machine.
"""

import os

_folder = os.environ.get("WSGLUE_BENCH_PROFILE")
if _folder:
    import atexit
    import cProfile

    _profile = cProfile.Profile()

    def _dump() -> None:
        _profile.disable()
        _profile.dump_stats(os.path.join(_folder, f"{os.getpid()}.prof"))

    atexit.register(_dump)
    _profile.enable()
