"""Annotations + images -> sharded TFRecords (pipeline.schema) + dataset_info.json.

``convert_dataset(fmt, annotations, images, output, split=..., num_shards=..., spec=...)``
is what convert_to_tfrecord.py and run.py call. It promises:

- **Fail early.** A malformed/empty annotation file, a missing image folder, a keypoint
  count that disagrees with the classes file for the whole file, a dataset_info.json in
  ``output`` with another keypoint definition, or zero valid records raise
  ``ConversionError`` and leave ``output`` as it was (no shard, no dataset_info.json).
- **Skip, count, list.** A bad record (missing, corrupt or truncated image, size mismatch,
  NaN / negative coordinates, ``../`` paths, wrong keypoint count, crowd, nothing labelled)
  is skipped and listed in dataset_info.json (file, record id, reason, message); every other
  record is written.
- **Parallel.** Worker processes (spawned, one per core by default) read and check each image
  once (JPEG: SOS/EOI markers + full decode; PNG: IEND + full decode) and serialize its one
  Example (all its persons that pass, schema version 2); they load only TensorFlow's Example
  protobuf classes, not the TF runtime. ``count`` in dataset_info.json counts persons,
  ``images`` the Examples.
- **Deterministic.** Persons keep the reader's order (grouped by image), the j-th written
  image of a split goes to shard ``j % num_shards``, Examples are serialized with sorted map
  keys and nothing time-dependent is stored: the same input gives the same shard bytes,
  whatever the number of workers.
- **Atomic, all or nothing** (the dataset contract is pipeline.records). Each shard is written
  as ``<name>.tmp-<pid>``, closed and fsynced; its size and sha256 go into the new
  dataset_info.json. The commit then (1) writes the journal ``dataset_info.commit.json`` (the
  new dataset_info, the renames ``tmp -> final`` with their sizes, the old shards of the
  converted splits to remove), (2) renames the shards into place, (3) removes the old shards,
  (4) writes dataset_info.json (tmp + rename), (5) removes the journal. Readers
  (``pipeline.records``) refuse a folder while the journal exists, and read only the shards
  dataset_info.json lists, each checked against its listed size. So after a kill at any point
  a reader sees the old dataset whole (killed before (1): only ``*.tmp-*`` files are new and
  nothing reads them), a clear refusal naming the repair (killed in (1)-(5)), or the new
  dataset whole. The next conversion into the folder first completes an interrupted commit
  from its journal (every renamed shard is checked against its size; if the temporary files
  are gone, the journal's splits are dropped from dataset_info.json with a message), then
  deletes leftover ``*.tmp-*`` files. The test hook ``HG_CONVERT_KILL_AT=<stage>`` SIGKILLs
  the converter at a commit stage (``COMMIT_STAGES``); only tests set it.
- **Disk full, unwritable folder.** Any write error (OSError, TensorFlow file errors) ends in
  one ``ConversionError`` naming the folder; the temporary shards are removed first.

Images: JPEG and PNG bytes are stored as they are; any other format OpenCV can read (BMP,
TIFF, WebP, ...) is re-encoded to PNG and listed under ``reencoded``. Width and height come
from the decoded image; when the annotation file gives them too they must agree
(``size_mismatch`` otherwise).

Shards: ``{split}-{i:05d}-of-{n:05d}.tfrecord``. Converting another split into the same
folder adds it to dataset_info.json; converting a split again replaces that split.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import itertools
import json
import math
import multiprocessing
import os
import re
import signal
import sys
from typing import Optional, Sequence

import numpy as np

from configs import KeypointSpec, KeypointSpecError, atomic_write_json, builtin_paths, load_keypoint_spec
from configs.files import remove_path, temp_path
from pipeline import schema
from pipeline.records import (
    INFO_NAME,
    JOURNAL_NAME,
    SHARD_RE,
    RecordsError,
    file_fingerprint,
    fsync_dir,
    read_dataset_info,
    sha256_file,
    shard_name,
    split_files,
)
from pipeline.schema import SCHEMA_VERSION, PersonRecord
from pipeline.sources import ConversionError, ReaderOptions, Skip, SourceData, validate_split_name

FORMATS = ("coco", "mpii", "custom", "dlc", "lsp")
SPEC_PREFIX = "keypoints"              # keypoints_classes.txt etc. beside the records
RECORDS_PER_SHARD = 1000               # automatic shard count: ceil(images / this)
IMAGES_IN_FLIGHT_PER_WORKER = 16       # read-ahead of the worker pool
KILL_ENV = "HG_CONVERT_KILL_AT"        # test hook: SIGKILL this process at a commit stage
__all__ = ["convert_dataset", "encode_records", "verify_dataset", "ConversionError", "ConvertOptions",
           "VerifyError", "FORMATS"]
COMMIT_STAGES = ("shards_written", "journal_written", "first_rename", "renamed", "old_removed",
                 "info_written")


class VerifyError(RuntimeError):
    """The records on disk disagree with dataset_info.json."""


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Everything besides the format and the three paths; defaults match the CLI's."""

    split: Optional[str] = None          # split name (default: from the file / "train")
    num_shards: Optional[int] = None     # per split; None: ceil(images / RECORDS_PER_SHARD)
    box_padding: float = 1.0             # multiplies every stored scale
    num_workers: int = 0                 # 0: one per CPU core; 1: in this process
    classes_path: Optional[str] = None   # keypoint files (coco/mpii default to configs/)
    matchpoint_path: Optional[str] = None
    skeleton_path: Optional[str] = None
    sigmas_path: Optional[str] = None    # OKS sigmas 'name,sigma' (default: COCO's for COCO's names)
    dlc_config: Optional[str] = None     # dlc: config.yaml (skeleton)
    val_images: Optional[str] = None     # dlc: basenames for "val", one a line
    val_fraction: Optional[float] = None  # dlc: seeded random fraction for "val"
    seed: int = 0
    quiet: bool = False                  # no progress bar
    verify: bool = False                 # read every shard back after writing

    def check(self) -> None:
        if self.split is not None:
            validate_split_name(self.split)
        if self.num_shards is not None and self.num_shards < 1:
            raise ConversionError(f"--num_shards {self.num_shards}: must be >= 1")
        if not (math.isfinite(self.box_padding) and self.box_padding > 0):
            raise ConversionError(f"--box_padding {self.box_padding}: must be a positive number")
        if self.num_workers < 0:
            raise ConversionError(f"--num_workers {self.num_workers}: must be >= 0 (0 = all cores)")


def convert_dataset(fmt: str, annotations: str, images: str, output: str, *,
                    split: Optional[str] = None, num_shards: Optional[int] = None,
                    spec: Optional[KeypointSpec] = None,
                    options: Optional[ConvertOptions] = None) -> dict:
    """Convert one annotation file into `output`; returns the dataset_info dict written there.

    `split`/`num_shards` override the same fields of `options`; `spec` overrides the keypoint
    files of `options`. Raises ConversionError (nothing written) or VerifyError."""
    options = options or ConvertOptions()
    overrides = {k: v for k, v in (("split", split), ("num_shards", num_shards)) if v is not None}
    options = dataclasses.replace(options, **overrides)
    options.check()
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not os.path.isdir(images):
        raise ConversionError(f"{images}: image folder not found; check --images")
    source = read_source(fmt, annotations, images, options, spec)
    source.spec = source.spec.with_sigmas_file(options.sigmas_path)   # KeypointSpecError: file:line
    spec = source.spec
    candidates = sum(len(r) for r in source.records.values())
    if candidates == 0:
        raise ConversionError(_nothing_valid(annotations, source.skipped))
    _prepare_output(output)
    recover_commit(output)
    existing = _existing_info(output, spec)

    splits = sorted(set(source.records) | {s.split for s in source.skipped})
    results = _write_splits(source, splits, output, options)
    try:
        if sum(r.count for r in results.values()) == 0:
            raise ConversionError(_nothing_valid(annotations, source.skipped + [
                s for r in results.values() for s in r.skipped]))
        for r in results.values():
            if r.count == 0:
                r.discard()
        files = spec.write(output, SPEC_PREFIX)
        info = _merge_info(existing, spec, files, fmt, annotations, images, options, source, results)
        journal = _journal(output, results, info)
        atomic_write_json(os.path.join(output, JOURNAL_NAME), journal)
        fsync_dir(output)
    except BaseException as e:
        for r in results.values():
            r.discard()
        if isinstance(e, OSError):
            raise ConversionError(_write_failed(output, e)) from None
        raise
    _stage("journal_written")
    try:
        apply_journal(output, journal)
    except OSError as e:
        raise ConversionError(
            f"{_write_failed(output, e)}; the folder is refused by readers until the commit is "
            f"finished: run the same conversion again once the problem is fixed") from None
    if options.verify:
        problems = verify_dataset(output)
        if problems:
            raise VerifyError("verification failed:\n  " + "\n  ".join(problems))
    return info


def _stage(name: str) -> None:
    """Test hook: SIGKILL this process when HG_CONVERT_KILL_AT names this commit stage."""
    if os.environ.get(KILL_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _write_failed(output: str, error: BaseException) -> str:
    what = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    where = getattr(error, "filename", None)
    return (f"cannot write the records in {output} ({what}{': ' + str(where) if where else ''}); "
            f"free disk space or choose a writable --output folder (nothing half-written was left)")


def _prepare_output(output: str) -> None:
    """Create `output` and check it takes files; ConversionError naming it otherwise."""
    probe = os.path.join(output, f".write-test-{os.getpid()}")
    try:
        os.makedirs(output, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"0")
        os.remove(probe)
    except OSError as e:
        raise ConversionError(
            f"--output {output}: cannot write there ({e.strerror or e}); choose a writable folder "
            f"(not an existing file, not read-only)") from None


# ----------------------------------------------------------------------------- commit


class _IncompleteCommit(Exception):
    """A journal whose temporary shards are gone: the commit cannot be completed."""


def _journal(output: str, results: dict, info: dict) -> dict:
    """What the commit will do (see the module docstring), as plain data."""
    renames, remove = [], []
    for r in results.values():
        finals = r.final_names if r.count else []
        renames += [[os.path.basename(t), n, b] for t, n, b in zip(r.temp_paths, finals, r.shard_bytes)]
        for path in sorted(glob.glob(os.path.join(output, f"{r.split}-*-of-*.tfrecord"))):
            m = re.fullmatch(SHARD_RE, os.path.basename(path))
            if m and m["split"] == r.split and os.path.basename(path) not in finals:
                remove.append(os.path.basename(path))
    return {"splits": sorted(results), "renames": renames, "remove": remove, "info": info}


def apply_journal(output: str, journal: dict) -> None:
    """Carry out a commit journal (idempotent: a rerun after a kill completes it)."""
    for i, (tmp, final, size) in enumerate(journal["renames"]):
        src, dst = os.path.join(output, tmp), os.path.join(output, final)
        if os.path.exists(src):
            os.replace(src, dst)
        elif not os.path.isfile(dst) or os.path.getsize(dst) != size:
            raise _IncompleteCommit(f"{src} is gone and {dst} is not the shard it should be")
        if i == 0:
            _stage("first_rename")
    fsync_dir(output)
    _stage("renamed")
    for name in journal["remove"]:
        remove_path(os.path.join(output, name))
    _stage("old_removed")
    atomic_write_json(os.path.join(output, INFO_NAME), journal["info"])
    fsync_dir(output)
    _stage("info_written")
    os.remove(os.path.join(output, JOURNAL_NAME))
    fsync_dir(output)


def recover_commit(output: str) -> None:
    """Complete the commit of a conversion killed in the middle of it (journal in `output`);
    when its temporary shards are gone, drop its splits from dataset_info.json instead."""
    path = os.path.join(output, JOURNAL_NAME)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            journal = json.load(f)
        splits = list(journal["splits"])
        journal["renames"], journal["remove"], journal["info"]   # noqa: B018 (shape check)
    except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: unreadable commit journal ({e}); remove the folder {output} "
                              f"and convert every split again") from None
    try:
        apply_journal(output, journal)
        print(f"{output}: completed the commit of an interrupted conversion (split(s) "
              f"{', '.join(splits)})", file=sys.stderr)
        return
    except _IncompleteCommit as e:
        reason = str(e)
    info = None
    if os.path.isfile(os.path.join(output, INFO_NAME)):
        try:
            with open(os.path.join(output, INFO_NAME), encoding="utf-8") as f:
                info = json.load(f)
        except ValueError:
            info = None
    for split in splits:
        for p in glob.glob(os.path.join(output, f"{split}-*-of-*.tfrecord*")):
            os.remove(p)
    if info is not None:
        for key in ("splits", "counts", "skipped"):
            for split in splits:
                (info.get(key) or {}).pop(split, None)
        atomic_write_json(os.path.join(output, INFO_NAME), info)
    os.remove(path)
    fsync_dir(output)
    print(f"{output}: an interrupted conversion could not be completed ({reason}); its split(s) "
          f"{', '.join(splits)} were removed: convert them again", file=sys.stderr)


# ----------------------------------------------------------------------------- reading


def resolve_spec(fmt: str, spec: Optional[KeypointSpec], options: ConvertOptions) -> Optional[KeypointSpec]:
    """The keypoint definition: `spec`, else the files of `options`, else configs/ for coco,
    mpii and lsp; None for dlc without files (its names come from the CSV header)."""
    if spec is not None:
        return spec
    if options.classes_path:
        return load_keypoint_spec(options.classes_path, options.matchpoint_path, options.skeleton_path)
    if fmt in ("coco", "mpii", "lsp"):
        paths = builtin_paths(fmt)
        return load_keypoint_spec(paths["classes_path"], options.matchpoint_path or paths["matchpoint_path"],
                                  options.skeleton_path or paths["skeleton_path"])
    if fmt == "custom":
        raise ConversionError("--format custom needs --classes_path (the keypoint names in joint_self "
                              "order), and optionally --matchpoint_path and --skeleton_path")
    return None


def read_source(fmt: str, annotations: str, images: str, options: ConvertOptions,
                spec: Optional[KeypointSpec] = None) -> SourceData:
    """Run the reader of `fmt` with the keypoint definition of resolve_spec (no image is
    opened here)."""
    from pipeline.sources import load_json
    from pipeline.sources.coco import read_coco
    from pipeline.sources.custom import read_custom
    from pipeline.sources.dlc import read_dlc
    from pipeline.sources.lsp import read_lsp
    from pipeline.sources.mpii import read_mpii

    spec = resolve_spec(fmt, spec, options)
    reader_options = ReaderOptions(
        split=options.split, box_padding=options.box_padding, val_images=options.val_images,
        val_fraction=options.val_fraction, seed=options.seed, dlc_config=options.dlc_config)
    if fmt not in ("dlc", "lsp") and (options.val_images or options.val_fraction is not None):
        raise ConversionError("--val_images and --val_fraction are for --format dlc and lsp only")
    if fmt != "dlc" and options.dlc_config:
        raise ConversionError("--config is for --format dlc only")
    if fmt == "coco":
        return read_coco(annotations, images, spec, reader_options)
    if fmt == "mpii":
        return read_mpii(annotations, images, spec, reader_options)
    if fmt == "custom":
        return read_custom(annotations, images, spec, reader_options, load_json(annotations))
    if fmt == "lsp":
        return read_lsp(annotations, images, spec, reader_options)
    return read_dlc(annotations, images, spec, reader_options, options.matchpoint_path,
                    options.skeleton_path)


def _nothing_valid(annotations: str, skipped: list[Skip]) -> str:
    reasons = _count_reasons(skipped)
    first = "; ".join(s.message for s in skipped[:3])
    return (f"{annotations}: no valid record to write (skipped: {reasons or 'none'}). "
            f"First problems: {first or 'the file lists no person'}")


def _existing_info(output: str, spec: KeypointSpec) -> Optional[dict]:
    """dataset_info.json already in `output`, checked to describe the same keypoints."""
    import json
    path = os.path.join(output, INFO_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        old = KeypointSpec.from_dict(info, path).to_dict()   # no oks_sigmas key: as written before
        version = info["schema_version"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path} exists but is not a dataset_info.json of this converter ({e}); "
                              f"remove the folder or choose another --output") from e
    if version != SCHEMA_VERSION:
        raise ConversionError(f"{path}: records of schema version {version}, this converter writes "
                              f"{SCHEMA_VERSION}; convert every split into a new --output folder")
    if old != spec.to_dict():
        raise ConversionError(
            f"{path}: the records there use another keypoint definition ({len(old['keypoint_names'])} "
            f"names: {', '.join(old['keypoint_names'])}; flip pairs, skeleton and OKS sigmas must match "
            f"too) than "
            f"this run ({spec.num_keypoints}: {', '.join(spec.names)}); use the same keypoint files "
            f"or another --output folder")
    return info


# ----------------------------------------------------------------------------- workers


@dataclasses.dataclass
class ImageTask:
    """All persons of one image in one split."""

    split: str
    image_path: str
    filename: str
    records: list[PersonRecord]


@dataclasses.dataclass
class ImageResult:
    """The image's one Example (None when every person was skipped) and its person count."""

    split: str
    example: Optional[bytes]
    persons: int
    skipped: list[Skip]
    reencoded: list[dict]


class ImageProblem(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


_NAMES: tuple[str, ...] = ()


def _init_worker(names: tuple[str, ...]) -> None:
    """Worker start: Example protobufs without the TF runtime; one OpenCV thread."""
    global _NAMES
    _NAMES = tuple(names)
    _protobuf_only_tensorflow()
    import cv2
    cv2.setNumThreads(1)


def _protobuf_only_tensorflow() -> None:
    """Make ``tensorflow.core.example`` importable without running tensorflow/__init__.py
    (which loads the whole runtime, ~2 s and hundreds of MB per worker): register the three
    packages as plain namespace modules pointing at TF's folders. Only in a fresh worker
    process; falls back to the normal import if TF's layout differs."""
    if "tensorflow" in sys.modules:
        return
    import importlib.util
    import types
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return
    root = list(spec.submodule_search_locations)[0]
    names = ("tensorflow", "tensorflow.core", "tensorflow.core.example")
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split(".")[1:])]
        sys.modules[name] = module
    try:
        from tensorflow.core.example import example_pb2, feature_pb2  # noqa: F401
    except ImportError:
        for name in names + ("tensorflow.core.example.example_pb2", "tensorflow.core.example.feature_pb2"):
            sys.modules.pop(name, None)


def process_image(task: ImageTask, names: Optional[tuple[str, ...]] = None) -> ImageResult:
    """Read and check one image and its persons, then serialize one Example holding the
    persons that pass (or skip them all)."""
    from pipeline.schema import encode_features, person_features
    names = names or _NAMES
    result = ImageResult(task.split, None, 0, [], [])

    def skip(record, reason, message):
        result.skipped.append(Skip(task.split, task.filename, str(record.annotation_id), reason,
                                   f"{task.filename} (record {record.annotation_id}): {message}"))

    try:
        data, fmt, width, height, source_format = load_image(task.image_path)
    except ImageProblem as e:
        for record in task.records:
            skip(record, e.reason, str(e))
        return result
    kept = []
    for record in task.records:
        if (record.width, record.height) != (0, 0) and (record.width, record.height) != (width, height):
            skip(record, "size_mismatch", f"the annotations say {record.width}x{record.height}, the "
                 f"image is {width}x{height}; fix the annotation or use the right image")
            continue
        far = _far_outside(record.keypoints, width, height)
        if far is not None:
            skip(record, "keypoint_outside_image", f"keypoint {far} at "
                 f"{np.round(np.asarray(record.keypoints)[far, :2], 1).tolist()} lies far outside the "
                 f"{width}x{height} image (more than the image size beyond its border); fix the label")
            continue
        record = dataclasses.replace(record, width=width, height=height)
        try:
            kept.append(person_features(record, names))
        except (ValueError, TypeError, OverflowError) as e:
            skip(record, "bad_value", f"cannot be encoded: {e}")
            continue
        if source_format != fmt:
            result.reencoded.append({"file": task.filename, "record": str(record.annotation_id),
                                     "from": source_format, "to": fmt})
    if kept:   # the image fields: any record of this image, with the measured size
        image = dataclasses.replace(task.records[0], width=width, height=height)
        result.example = encode_features(image, kept, data, fmt, reencoded=source_format != fmt)
        result.persons = len(kept)
    return result


def _far_outside(keypoints, width: int, height: int) -> Optional[int]:
    """Index of the first labelled keypoint more than the image's own size outside the image
    (x < -W, x > 2W, y < -H or y > 2H): a label in another image's pixels, or a typo."""
    kp = np.asarray(keypoints, np.float64)
    labelled = kp[:, 2] > 0
    x, y = kp[:, 0], kp[:, 1]
    bad = labelled & ((x < -width) | (x > 2 * width) | (y < -height) | (y > 2 * height))
    return int(np.argmax(bad)) if bad.any() else None


def sniff_format(data: bytes) -> str:
    """Image format from the file's first bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "unknown"


def load_image(path: str) -> tuple[bytes, str, int, int, str]:
    """(bytes to store, stored format, width, height, original format) of an image file.

    JPEG/PNG bytes come back unchanged; other formats are re-encoded to PNG. Raises
    ImageProblem for a missing, empty, truncated or undecodable file."""
    import cv2
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageProblem("missing_image", f"image file not found: {path}") from None
    except OSError as e:
        raise ImageProblem("unreadable_image", f"cannot read {path}: {e}") from None
    if not data:
        raise ImageProblem("corrupt_image", f"{path} is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt == "jpeg" and not _jpeg_complete(data):
        raise ImageProblem("truncated_jpeg", f"{path}: JPEG without an end-of-image marker after its "
                           f"last scan (truncated download or copy); replace the file")
    if fmt == "png" and b"IEND" not in data[-12:]:
        raise ImageProblem("truncated_png", f"{path}: PNG without its IEND chunk (truncated); "
                           f"replace the file")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None or image.ndim < 2 or image.size == 0:
        raise ImageProblem("corrupt_image", f"{path}: cannot be decoded as an image ({fmt}); "
                           f"replace the file")
    height, width = int(image.shape[0]), int(image.shape[1])
    if fmt in ("jpeg", "png"):
        return data, fmt, width, height, fmt
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ImageProblem("unsupported_image", f"{path}: {fmt} image cannot be re-encoded as PNG "
                           f"(dtype {image.dtype}); convert it to JPEG or PNG")
    return encoded.tobytes(), "png", width, height, fmt


def _jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the start of the last scan (a truncated file
    stops inside scan data; trailing bytes after EOI are allowed)."""
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.rfind(b"\xff\xd9") > sos


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass
class SplitResult:
    """Shards of one split written under temporary names, and what was skipped."""

    split: str
    num_shards: int
    temp_paths: list[str]
    final_names: list[str]
    count: int = 0          # persons written
    images: int = 0         # Examples written (one per image)
    skipped: list[Skip] = dataclasses.field(default_factory=list)
    reencoded: list[dict] = dataclasses.field(default_factory=list)
    shard_bytes: list[int] = dataclasses.field(default_factory=list)
    shard_sha256: list[str] = dataclasses.field(default_factory=list)

    def discard(self) -> None:
        """Remove the temporary shards (never raises: it runs while another error unwinds)."""
        for p in self.temp_paths:
            try:
                os.remove(p)
            except OSError:
                pass

    def seal(self) -> None:
        """fsync each closed shard and record its size and sha256 (for dataset_info.json)."""
        self.shard_bytes, self.shard_sha256 = [], []
        for tmp in self.temp_paths:
            with open(tmp, "rb+") as f:       # on disk before it gets its final name
                os.fsync(f.fileno())
            self.shard_bytes.append(os.path.getsize(tmp))
            self.shard_sha256.append(sha256_file(tmp))


def _image_tasks(records: list[PersonRecord], split: str) -> list[ImageTask]:
    """Group a split's records by image, in order of first appearance."""
    tasks: dict[str, ImageTask] = {}
    for r in records:
        if r.image_path not in tasks:
            tasks[r.image_path] = ImageTask(split, r.image_path, r.filename, [])
        tasks[r.image_path].records.append(r)
    return list(tasks.values())


def encode_records(records: Sequence[PersonRecord], names: Sequence[str],
                   split: str = "train") -> tuple[list[bytes], list[Skip]]:
    """The serialized Examples the converter would write for ``records`` (each image read and
    checked once, in this process, nothing written to disk): one per image holding its
    persons, images in order of first appearance; and the records skipped for their image or
    values (``Skip``s of ``split``, with the reasons dataset_info.json lists)."""
    examples: list[bytes] = []
    skipped: list[Skip] = []
    for task in _image_tasks(list(records), split):
        result = process_image(task, tuple(names))
        examples += [result.example] if result.example is not None else []
        skipped += result.skipped
    return examples, skipped


def _write_splits(source: SourceData, splits: list[str], output: str,
                  options: ConvertOptions) -> dict[str, SplitResult]:
    """Write every split's shards under temporary names (removed again on any error)."""
    import tensorflow as tf

    _remove_stale_temps(output, splits)
    results: dict[str, SplitResult] = {}
    writers: dict[str, list] = {}
    tasks: list[ImageTask] = []
    for split in splits:
        records = source.records.get(split, [])
        split_tasks = _image_tasks(records, split)
        n = max(1, min(options.num_shards or math.ceil(len(split_tasks) / RECORDS_PER_SHARD),
                       len(split_tasks)))
        finals = [shard_name(split, i, n) for i in range(n)]
        temps = [temp_path(os.path.join(output, name), keep_extension=False) for name in finals]
        results[split] = SplitResult(split, n, temps, finals,
                                     skipped=[s for s in source.skipped if s.split == split])
        tasks += split_tasks
    try:
        for split, result in results.items():
            writers[split] = [tf.io.TFRecordWriter(p) for p in result.temp_paths]
        total = sum(len(t.records) for t in tasks)
        for image in _run_tasks(tasks, source.spec.names, options, total):
            result = results[image.split]
            if image.example is not None:
                writers[image.split][result.images % result.num_shards].write(image.example)
                result.images += 1
                result.count += image.persons
            result.skipped += image.skipped
            result.reencoded += image.reencoded
        for ws in writers.values():
            for w in ws:
                w.close()
        for result in results.values():
            if result.count:
                result.seal()
        _stage("shards_written")
    except BaseException as e:
        for ws in writers.values():
            for w in ws:
                try:
                    w.close()
                except Exception:     # noqa: BLE001 - a full disk fails again here; discard anyway
                    pass
        for result in results.values():
            result.discard()
        if isinstance(e, (OSError, tf.errors.OpError)):
            raise ConversionError(_write_failed(output, e)) from None
        raise
    return results


def _run_tasks(tasks: list[ImageTask], names, options: ConvertOptions, total: int):
    """Yield ImageResults in task order, from a pool of spawned workers (or in-process)."""
    from tqdm import tqdm
    workers = options.num_workers or available_cpus()
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=total, unit="rec", file=sys.stderr, desc="converting",
               disable=options.quiet or not sys.stderr.isatty())
    try:
        if workers == 1:
            for task in tasks:
                result = process_image(task, tuple(names))
                bar.update(len(task.records))
                yield result
            return
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tuple(names),)) as pool:
            # At most `window` images in flight: memory stays bounded when writing is slower.
            window = workers * IMAGES_IN_FLIGHT_PER_WORKER
            pending: collections.deque = collections.deque()
            todo = iter(tasks)
            for task in itertools.islice(todo, window):
                pending.append((task, pool.apply_async(process_image, (task,))))
            while pending:
                task, future = pending.popleft()
                result = future.get()
                for nxt in itertools.islice(todo, 1):
                    pending.append((nxt, pool.apply_async(process_image, (nxt,))))
                bar.update(len(task.records))
                yield result
    finally:
        bar.close()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _remove_stale_temps(output: str, splits: list[str]) -> None:
    """Temporary shards left by a killed run into this folder (of any split: a commit journal
    that still needs them was carried out by recover_commit before this runs)."""
    for path in glob.glob(os.path.join(output, "*-of-*.tfrecord.tmp-*")):
        if re.fullmatch(SHARD_RE + r"\.tmp-\d+", os.path.basename(path)):
            os.remove(path)


# ----------------------------------------------------------------------------- dataset_info


def _count_reasons(skipped: list[Skip]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return dict(sorted(counts.items()))


def _merge_info(existing: Optional[dict], spec: KeypointSpec, files: dict, fmt: str, annotations: str,
                images: str, options: ConvertOptions, source: SourceData,
                results: dict[str, SplitResult]) -> dict:
    """dataset_info.json: the existing splits kept, this run's splits replaced or added."""
    src = {"format": fmt, "annotations": os.path.abspath(annotations), "images": os.path.abspath(images),
           "annotations_fingerprint": file_fingerprint(annotations),
           "keypoint_sources": {k: {"path": os.path.abspath(v), **file_fingerprint(v)}
                                for k, v in (("classes_path", options.classes_path),
                                             ("matchpoint_path", options.matchpoint_path),
                                             ("skeleton_path", options.skeleton_path),
                                             ("dlc_config", options.dlc_config)) if v}}
    splits = dict((existing or {}).get("splits", {}))
    for split, r in results.items():
        splits[split] = {
            "count": r.count,
            "images": r.images,
            "num_shards": len(r.final_names) if r.count else 0,
            "shards": r.final_names if r.count else [],
            "shard_bytes": r.shard_bytes if r.count else [],
            "shard_sha256": r.shard_sha256 if r.count else [],
            "source": src,
            "box_padding": options.box_padding,
            "skipped": {"total": len(r.skipped), "by_reason": _count_reasons(r.skipped),
                        "records": [s.to_dict() for s in r.skipped]},
            "reencoded": {"total": len(r.reencoded), "records": r.reencoded},
            "unlabelled_points": dict(source.unlabelled_points),
            "notes": list(source.notes),
        }
    splits = dict(sorted(splits.items()))
    return {
        "schema_version": SCHEMA_VERSION,
        "num_keypoints": spec.num_keypoints,
        **spec.to_dict(),
        "keypoint_files": {k: os.path.abspath(v) for k, v in files.items()},
        "counts": {k: v["count"] for k, v in splits.items()},
        "source": src,
        "skipped": {k: v["skipped"]["by_reason"] for k, v in splits.items()},
        "splits": splits,
    }


# ----------------------------------------------------------------------------- verify


def verify_dataset(output: str) -> list[str]:
    """Read every shard back; a list of problems (empty when the records match
    dataset_info.json: shard files, person and image counts, and every record parses as
    ``pipeline.decoder`` reads it, with K values per person and keypoint, in the folder's
    schema version)."""
    import tensorflow as tf

    from pipeline.records import verify_split
    try:
        info = read_dataset_info(output)
    except RecordsError as e:
        return [str(e)]
    problems = []
    on_disk: dict[str, set] = {}
    for p in glob.glob(os.path.join(output, "*-of-*.tfrecord")):
        m = re.fullmatch(SHARD_RE, os.path.basename(p))
        if m:
            on_disk.setdefault(m["split"], set()).add(os.path.basename(p))
    version = int(info.get("schema_version", SCHEMA_VERSION))
    for split in sorted(set(info.get("splits", {})) | set(on_disk)):
        entry = info.get("splits", {}).get(split)
        if entry is None:
            problems.append(f"{split}: shards {sorted(on_disk[split])} are not in {INFO_NAME}")
            continue
        listed = set(entry["shards"])
        if listed != on_disk.get(split, set()):
            problems.append(f"{split}: {INFO_NAME} lists {sorted(listed)}, the folder has "
                            f"{sorted(on_disk.get(split, set()))}")
            continue
        persons = images = 0
        for name in sorted(listed):
            n, m, error = _read_shard(tf, os.path.join(output, name), len(info["keypoint_names"]), version)
            persons, images = persons + n, images + m
            if error:
                problems.append(f"{split}/{name}: {error}")
        if persons != info["counts"].get(split):
            problems.append(f"{split}: {persons} persons in the shards, {INFO_NAME} says "
                            f"{info['counts'].get(split)}")
        if "images" in entry and images != entry["images"]:
            problems.append(f"{split}: {images} records (images) in the shards, {INFO_NAME} says "
                            f"{entry['images']}")
        if listed:
            problems += verify_split(output, split, info)
    return problems


def _read_shard(tf, path: str, num_keypoints: int, version: int) -> tuple[int, int, Optional[str]]:
    """(persons read, records read, first problem or None) of one shard."""
    from pipeline.decoder import decode_persons
    features = schema.parsing_spec((schema.VERSION,))

    def summary(serialized):
        shape = tf.shape(decode_persons(serialized)["keypoints"])
        return shape[0], shape[1], tf.io.parse_single_example(serialized, features)[schema.VERSION]

    persons = images = 0
    try:
        for counts, ks, versions in tf.data.TFRecordDataset(path).map(summary).batch(256):
            ks, versions = ks.numpy(), versions.numpy()
            if np.any(ks != num_keypoints):
                i = int(np.argmax(ks != num_keypoints))
                return persons, images, (f"record #{images + i} holds {int(ks[i])} keypoints per "
                                         f"person, {INFO_NAME} lists {num_keypoints}")
            if np.any(versions != version):
                return persons, images, (f"schema version {sorted(set(versions.tolist()))}, "
                                         f"{INFO_NAME} says {version}")
            persons += int(counts.numpy().sum())
            images += int(counts.shape[0])
    except tf.errors.InvalidArgumentError as e:
        return persons, images, f"a record near #{images} does not parse: {e.message.splitlines()[0]}"
    except tf.errors.OpError as e:
        return persons, images, (f"unreadable after {images} records ({type(e).__name__}: "
                                 f"{e.message.splitlines()[0]})")
    return persons, images, None


# ------------------------------------------------------------------ run.py --dataset_path cache

def records_for_dataset_path(root: str, classes_path: Optional[str], matchpoint_path: Optional[str] = None,
                             skeleton_path: Optional[str] = None) -> str:
    """The TFRecords of the original project's dataset folder (`root`/annotations.json and
    `root`/images), cached in `root`/tfrecords: reused while they match their source
    (annotations.json's sha256, the keypoint definition, the shards' listed sizes), else
    rebuilt with one printed line saying why. ConversionError for a bad folder or file."""
    annotations = os.path.join(root, "annotations.json")
    images = os.path.join(root, "images")
    if not os.path.isfile(annotations) or not os.path.isdir(images):
        raise ConversionError(f"--dataset_path {root} must hold annotations.json and images/")
    if not classes_path:
        raise ConversionError("--dataset_path needs --classes_path (the keypoint names of annotations.json)")
    try:
        spec = load_keypoint_spec(classes_path, matchpoint_path, skeleton_path)
    except KeypointSpecError as e:
        raise ConversionError(str(e)) from e
    cache = os.path.join(root, "tfrecords")
    reason = _stale_cache_reason(cache, annotations, spec)
    if reason is None:
        return cache
    print(f"{reason}: converting {annotations} to TFRecords in {cache}", flush=True)
    if os.path.isdir(cache):          # only what the converter wrote there: info, journal, shards
        for name in sorted(os.listdir(cache)):
            if name in (INFO_NAME, JOURNAL_NAME) or re.fullmatch(SHARD_RE + r"(\.tmp-\d+)?", name):
                os.remove(os.path.join(cache, name))
    try:
        convert_dataset("custom", annotations, images, cache, spec=spec)
    except KeypointSpecError as e:
        raise ConversionError(str(e)) from e
    return cache


def _stale_cache_reason(cache: str, annotations: str, spec: KeypointSpec) -> Optional[str]:
    """Why the records cached in `cache` cannot be reused for `annotations` and `spec`, or None."""
    if not os.path.isdir(cache):
        return "no cached records yet"
    try:
        info = read_dataset_info(cache)
        for split in info.get("splits") or {}:
            if info["counts"].get(split):
                split_files(cache, split, info)
    except RecordsError as e:
        return f"the cached records are unusable ({e})"
    sources = [entry.get("source") or {} for entry in (info.get("splits") or {}).values()]
    stored = [src.get("annotations_fingerprint") for src in sources]
    if not stored or any(fp is None for fp in stored):
        return "the cached records do not record which annotations.json they came from"
    now = os.stat(annotations)
    digest = sha256_file(annotations)
    if any(fp["size"] != now.st_size or fp["sha256"] != digest for fp in stored):
        return (f"{annotations} changed since the cached records were written ({stored[0]['size']} -> "
                f"{now.st_size} bytes, sha256 differs)")
    try:
        cached = KeypointSpec.from_dict(info, os.path.join(cache, "dataset_info.json"))
    except (KeyError, KeypointSpecError):
        return "its dataset_info.json holds no valid keypoint definition"
    if cached.to_dict() != spec.to_dict():
        return ("the keypoint files (--classes_path, --matchpoint_path, --skeleton_path, "
                "--sigmas_path) changed")
    return None
