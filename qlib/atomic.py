"""Writing a file so that it is never seen half-written: every file qlib writes (cached data and
models, exported variants, results JSON, the README's figure) goes through ``replacing``.

The content is written to a temporary file in the target's folder, flushed to disk and then
renamed over the target (``os.replace``, atomic on POSIX within one file system). If the
writer fails, or the run is interrupted, the temporary file is removed and the target is left
as it was: a cache is never corrupted by a crash or a bad input halfway through.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; when the block ends
    without an exception the file is synced and renamed to ``path`` (with the permissions an
    ordinary new file gets: ``mkstemp`` makes it private), otherwise it is removed. Creates
    ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def torch_save(obj, path) -> Path:
    """``torch.save(obj)`` to ``path`` through ``replacing``; returns ``path``."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
