"""The dataset contract: what a records folder written by pipeline.convert holds, and how
every reader checks it before reading.

A folder holds ``dataset_info.json`` and the shards it lists, per split:
``splits[split]["shards"]`` (file names ``{split}-{i:05d}-of-{n:05d}.tfrecord``),
``["shard_bytes"]`` (each file's size) and ``["shard_sha256"]`` (each file's sha256),
``["count"]`` (labelled persons; ``counts`` repeats them per split) and ``["images"]`` (records:
one per image since schema version 2; absent in version-1 folders, where each record was one
person). ``schema_version`` says which ``pipeline.schema`` layout the shards hold; readers
take versions 1 and 2. Readers never glob: ``split_files`` returns exactly the listed
shards after checking that each exists with its listed size, and raises ``RecordsError``
(naming the file and the repair) otherwise. A folder with ``dataset_info.commit.json`` (the
commit journal of pipeline.convert) is in the middle of a commit and is refused as a whole
until a conversion into it completes the commit. ``verify_split`` also checks the sha256.

``RecordsError`` is a ``ValueError``; run.py, convert_to_tfrecord.py and export map it to
one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

INFO_NAME = "dataset_info.json"
JOURNAL_NAME = "dataset_info.commit.json"
SHARD_RE = r"(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord"
RERUN = "run convert_to_tfrecord.py into this folder again (the same command) to rewrite it"


class RecordsError(ValueError):
    """A records folder that does not match its dataset_info.json (or has none); the message
    names the file and says how to repair it."""


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _is_url(path: str) -> bool:
    return "://" in path


def _exists(path: str) -> bool:
    if _is_url(path):
        import tensorflow as tf
        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _size(path: str) -> Optional[int]:
    """Size in bytes, None when the file does not exist."""
    if _is_url(path):
        import tensorflow as tf
        try:
            return int(tf.io.gfile.stat(path).length)
        except tf.errors.NotFoundError:
            return None
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return None


def _read_bytes(path: str) -> bytes:
    if _is_url(path):
        import tensorflow as tf
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str) -> dict:
    """{"size", "mtime_ns", "sha256"} of a local file (what the --dataset_path cache compares)."""
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": sha256_file(path)}


def check_not_committing(folder: str) -> None:
    """RecordsError when a conversion was interrupted while committing into `folder`."""
    journal = os.path.join(folder, JOURNAL_NAME)
    if _exists(journal):
        raise RecordsError(
            f"{journal}: a conversion into {folder} was interrupted while it replaced the shards, "
            f"so the folder mixes old and new files and is not read; {RERUN} (it completes the "
            f"interrupted commit)")


def read_dataset_info(folder: str) -> dict:
    """dataset_info.json of a folder this converter wrote, checked for the keys readers need
    and for an unfinished commit; ``RecordsError`` (naming the file and the fix) otherwise."""
    path = os.path.join(folder, INFO_NAME)
    check_not_committing(folder)
    if not _exists(path):
        raise RecordsError(f"{path} not found: the folder must be written by convert_to_tfrecord.py "
                           f"(TFRecords + dataset_info.json)")
    try:
        info = json.loads(_read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordsError(f"{path}: not valid json ({e}); {RERUN}") from None
    if not isinstance(info, dict):
        raise RecordsError(f"{path}: not a dataset_info.json object; {RERUN}")
    for key in ("keypoint_names", "counts"):
        if key not in info:
            raise RecordsError(f"{path}: missing {key!r}; {RERUN}")
    return info


def split_files(folder: str, split: str, info: Optional[dict] = None) -> list[str]:
    """The shard paths of `split` exactly as dataset_info.json lists them, each checked to exist
    with its listed size; RecordsError naming the first file that does not match."""
    info = read_dataset_info(folder) if info is None else info
    path = os.path.join(folder, INFO_NAME)
    entry = (info.get("splits") or {}).get(split)
    if not entry:
        raise RecordsError(f"{path} has no {split!r} split (splits: "
                           f"{', '.join(sorted(info.get('splits') or {})) or 'none'}); convert one "
                           f"with convert_to_tfrecord.py --split {split}")
    names = list(entry.get("shards") or [])
    sizes = entry.get("shard_bytes")
    if not names:
        raise RecordsError(f"{path}: the {split} split lists no shard; {RERUN}")
    if sizes is None or len(sizes) != len(names):
        raise RecordsError(f"{path} was written by an older converter (no shard sizes), so its "
                           f"shards cannot be checked; {RERUN}")
    files = []
    for name, expected in zip(names, sizes):
        file = os.path.join(folder, name)
        size = _size(file)
        if size is None:
            raise RecordsError(f"{file}: listed in {path} but missing; {RERUN}")
        if size != int(expected):
            raise RecordsError(f"{file}: {size} bytes, {path} says {int(expected)} (the shard was "
                               f"cut short or replaced after the conversion); {RERUN}")
        files.append(file)
    return files


def verify_split(folder: str, split: str, info: Optional[dict] = None) -> list[str]:
    """Problems of the listed shards' bytes (sizes, then sha256); empty when they match."""
    info = read_dataset_info(folder) if info is None else info
    try:
        files = split_files(folder, split, info)
    except RecordsError as e:
        return [str(e)]
    entry = info["splits"][split]
    sums = entry.get("shard_sha256") or [None] * len(files)
    problems = []
    for file, expected in zip(files, sums):
        if expected is not None and sha256_file(file) != expected:
            problems.append(f"{file}: sha256 differs from {INFO_NAME} (the shard changed after the "
                            f"conversion); {RERUN}")
    return problems


def find_unreadable(files: list[str]) -> list[str]:
    """'file: problem' for each TFRecord file that does not read to its end."""
    import tensorflow as tf
    bad = []
    for file in files:
        n = 0
        try:
            for _ in tf.data.TFRecordDataset(file):
                n += 1
        except tf.errors.OpError as e:
            bad.append(f"{file}: unreadable after {n} records ({type(e).__name__}: "
                       f"{(e.message or '').splitlines()[0] if e.message else ''})")
    return bad


def is_data_loss(error: BaseException) -> bool:
    """A TensorFlow error that means a record file is damaged (DataLoss, or a corrupt record)."""
    name = type(error).__name__
    return name == "DataLossError" or (name == "InvalidArgumentError"
                                       and "corrupted record" in str(error).lower())


def data_loss_error(folder: str, error: BaseException, splits: Optional[list[str]] = None) -> RecordsError:
    """The RecordsError for a DataLossError met while reading `folder`: every listed shard (of
    `splits`, default all) is read once more to name the damaged file(s)."""
    files: list[str] = []
    try:
        info = read_dataset_info(folder)
        for split in splits or sorted(info.get("splits") or {}):
            entry = (info.get("splits") or {}).get(split) or {}
            files += [os.path.join(folder, n) for n in entry.get("shards") or []]
    except RecordsError as e:
        return e
    bad = find_unreadable([f for f in files if _exists(f)])
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if bad:
        return RecordsError(f"{bad[0]}" + (f" (and {len(bad) - 1} more damaged shard(s))" if len(bad) > 1
                                           else "") + f"; {RERUN}")
    return RecordsError(f"{folder}: a shard is damaged ({first}); {RERUN}")


def fsync_dir(folder: str) -> None:
    """Make renames in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
