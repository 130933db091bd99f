"""Atomic file writes: a reader sees a file's old content or its new content, never a part.

A writer writes to a temporary sibling of its target (``temp_path``: same folder, so the
final rename is atomic) and renames it onto the target only once it is whole; on any error
the temporary file is removed and the target is left as it was. (One writer names its
temporary itself: ``model.run_dir`` rewrites an event file under a name without "tfevents",
which TensorBoard would read.)
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Iterator

TEMP_TAG = ".tmp-"      # every temporary name holds it: `*.tmp-*` finds leftovers
WHOLE_EXTENSIONS = (".weights.h5",)   # kept whole: Keras refuses any other weights name


def temp_path(path: str, keep_extension: bool = True) -> str:
    """The temporary sibling of ``path`` for this process: ``<stem>.tmp-<pid><ext>`` (the
    extension kept, for writers that choose the format from it: OpenCV, Keras) or, with
    ``keep_extension=False``, ``<path>.tmp-<pid>``. A ``WHOLE_EXTENSIONS`` suffix is kept
    whole (``a.weights.h5`` -> ``a.tmp-<pid>.weights.h5``)."""
    path = path.rstrip("/") or path
    if not keep_extension:
        return f"{path}{TEMP_TAG}{os.getpid()}"
    whole = [e for e in WHOLE_EXTENSIONS if path.endswith(e) and len(path) > len(e)]
    stem, ext = (path[:-len(whole[0])], whole[0]) if whole else os.path.splitext(path)
    return f"{stem}{TEMP_TAG}{os.getpid()}{ext}"


@contextlib.contextmanager
def atomic_path(path: str, keep_extension: bool = True) -> Iterator[str]:
    """Yields ``temp_path(path)`` to write (a file or a folder); when the block ends without
    error it is renamed onto ``path`` (a folder already at ``path`` is replaced), otherwise it is
    removed."""
    tmp = temp_path(path, keep_extension)
    remove_path(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            old = f"{path.rstrip('/')}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        remove_path(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (synced to disk before the rename)."""
    with atomic_path(path, keep_extension=False) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, data) -> None:
    """Write ``data`` as indented json (one final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_path(path: str) -> None:
    """Remove the file, link or folder at ``path``; nothing when there is none."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
