"""
Reading the signing keys of session cookies from C{--secret-file}.

One key per line, blank lines ignored; the first key signs new cookies and
every key verifies, so a deployment rotates keys by putting the new key on
top and dropping the old one once the old cookies have expired.
"""

from __future__ import annotations

import os
import stat
from typing import List


class KeyFileError(ValueError):
    """
    The secret file cannot be used; the message says why, in one line.
    """


def readKeys(path: str, option: str = "--secret-file") -> List[bytes]:
    """
    The keys in the secret file at C{path}, signing key first.

    @param option: the option that named the file, for the messages.
    @raise KeyFileError: if the file is missing, unreadable, readable by
        every user (the keys forge sessions), or holds no key.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(1 << 20)
    except FileNotFoundError:
        raise KeyFileError(f"{option} {path!r} does not exist")
    except IsADirectoryError:
        raise KeyFileError(f"{option} {path!r} is a folder, not a file")
    except OSError as e:
        raise KeyFileError(f"{option} {path!r} cannot be read: {e.strerror}")
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{option} {path!r} is not a regular file")
    if mode & stat.S_IROTH:
        raise KeyFileError(f"{option} {path!r} is readable by every user; chmod o-r it")
    keys = [line.strip() for line in data.splitlines()]
    keys = [key for key in keys if key]
    if not keys:
        raise KeyFileError(f"{option} {path!r} holds no key")
    return keys
