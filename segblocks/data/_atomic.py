"""Build a directory atomically: write into a temporary sibling, then ``os.rename`` it in place.

A directory at the final path is therefore always complete. An interrupted build leaves only a
hidden ``.<name>.tmp-<host>-<pid>-*`` sibling that is never read; the next call removes such
leftovers once they are stale (their process on this host is dead, or they are older than
``stale_after`` seconds) and builds again. Several processes (e.g. DDP ranks) may build at the
same time: the first rename wins and the others discard their copy (a directory cannot be
renamed onto a non-empty one).

The finished directory gets the permissions of an ordinary ``mkdir`` under the process's umask
(``tempfile.mkdtemp`` creates 0700, which would survive the rename and hide a shared cache
from other users).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

__all__ = ["STALE_AFTER_SECONDS", "build_directory_atomically", "remove_stale_temporaries"]

#: Age after which another host's (or an unidentifiable) temporary build folder counts as abandoned.
STALE_AFTER_SECONDS = 30 * 60


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(final_dir: str | os.PathLike, *, stale_after: float = STALE_AFTER_SECONDS) -> list[Path]:
    """Remove the abandoned ``.<name>.tmp-*`` siblings of ``final_dir``; returns the removed paths.

    A temporary folder made on this host is stale when its process no longer exists; one made on
    another host sharing the file system (or with no host and pid in its name) when it is older
    than ``stale_after`` seconds.
    """
    final_dir = Path(final_dir)
    if not final_dir.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(final_dir.name)}\.tmp-(?:(?P<host>.+)-(?P<pid>\d+)-)?[^-]*$")
    host, now, removed = _host(), time.time(), []
    for path in final_dir.parent.iterdir():
        match = pattern.match(path.name)
        if match is None or not path.is_dir():
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile
            continue
        if match["pid"] is not None and match["host"] == host:
            stale = not _pid_alive(int(match["pid"]))  # a live builder on this host is never disturbed
        else:
            stale = age > stale_after
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def build_directory_atomically(
    final_dir: str | os.PathLike, build: Callable[[Path], None], *, stale_after: float = STALE_AFTER_SECONDS
) -> Path:
    """Return ``final_dir``, calling ``build(tmp_dir)`` to create it first if it does not exist.

    Args:
        final_dir: directory to create; its parent is created if needed.
        build: writes the directory's contents into the (empty) temporary directory it receives.
        stale_after: age in seconds after which leftover temporary folders are removed (see
            :func:`remove_stale_temporaries`).

    Returns:
        ``final_dir`` as a Path.
    """
    final_dir = Path(final_dir)
    remove_stale_temporaries(final_dir, stale_after=stale_after)
    if final_dir.is_dir():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent as the target so that the rename stays on one file system (atomic).
    prefix = f".{final_dir.name}.tmp-{_host()}-{os.getpid()}-"
    tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=final_dir.parent))
    try:
        build(tmp_dir)
        os.chmod(tmp_dir, 0o777 & ~_current_umask())  # mkdtemp's 0700 would survive the rename
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not final_dir.is_dir():
                raise
            shutil.rmtree(tmp_dir)  # another process finished first: keep its copy
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir
