"""Build a directory atomically: write into a temporary sibling, then ``os.rename`` it in place.

A directory at the final path is therefore always complete. An interrupted build leaves only a
hidden ``.<name>.tmp-*`` sibling that is never read, and the next call builds again. Several
processes (e.g. DDP ranks) may build at the same time: the first rename wins and the others
discard their copy (a directory cannot be renamed onto a non-empty one).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["build_directory_atomically"]


def build_directory_atomically(final_dir: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Return ``final_dir``, calling ``build(tmp_dir)`` to create it first if it does not exist.

    Args:
        final_dir: directory to create; its parent is created if needed.
        build: writes the directory's contents into the (empty) temporary directory it receives.

    Returns:
        ``final_dir`` as a Path.
    """
    final_dir = Path(final_dir)
    if final_dir.is_dir():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent as the target so that the rename stays on one file system (atomic).
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        build(tmp_dir)
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
