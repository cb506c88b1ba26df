"""Writing files so that a reader, or a crash, never sees half of one."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` to a ``.tmp`` sibling, then rename it over ``path`` (atomic on POSIX).

    ``fsync`` also flushes the data to disk before the rename, for files rewritten while a run is
    in progress (a power cut then leaves the previous complete version, not an empty file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):  # a failed write leaves nothing half-written behind
            tmp.unlink()
        raise
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same resolved path (symlinks, ``..``, a relative
    path), or, for files that exist, the same inode (a hard link, a bind mount)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.resolve() == pb.resolve():
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:  # one of them does not exist (yet): then they are not one file
        return False


def slug(text: str, *, default: str = "run") -> str:
    """``text`` as a file-name part: runs of anything but letters, digits, ``.``, ``_`` and
    ``-`` become one ``-``; ``default`` when nothing is left."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")
    return s or default
