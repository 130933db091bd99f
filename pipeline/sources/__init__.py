"""Annotation readers: each turns one annotation file into PersonRecords per split.

A reader never opens an image (the converter's workers do); it parses the annotation file,
converts coordinates to the convention of ``pipeline.coords``, and reports every record it
cannot use as a ``Skip`` (file, record id, reason, message) instead of dropping it.
Problems that make the whole file useless raise ``ConversionError`` before anything is
written.

Person boxes: every reader stores ``bbox`` = the person box [x, y, w, h] in pixels (the
annotated box, or the square ``200 * scale`` box when the source gives a centre and a
scale), and ``center``/``scale`` of that box with ``scale`` multiplied by ``box_padding``
(default 1.0; the parser adds its own 1.25 crop padding later).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Optional

import numpy as np

from configs import KeypointSpec
from pipeline.coords import PIXELS_PER_SCALE, box_to_center_scale
from pipeline.schema import PersonRecord


class ConversionError(ValueError):
    """The whole input is unusable (bad file, wrong keypoint count, nothing valid);
    the message names the file and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """One record that was not written, and why."""

    split: str
    file: str       # image path relative to the image folder (or the annotation file)
    record: str     # annotation id / record index in the source
    reason: str     # short key, e.g. "crowd", "missing_image", "nan_coordinate"
    message: str    # one line for a person: what is wrong and where

    def to_dict(self) -> dict:
        return {"file": self.file, "record": self.record, "reason": self.reason,
                "message": self.message}


@dataclasses.dataclass
class SourceData:
    """What a reader returns: records per split (in a stable order) and what it skipped."""

    spec: KeypointSpec
    records: dict[str, list[PersonRecord]]
    skipped: list[Skip]
    notes: list[str] = dataclasses.field(default_factory=list)
    # Labelled-looking points stored as unlabelled, by reason (e.g. non-positive coordinates).
    unlabelled_points: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    """Settings the readers need (a subset of the converter's options)."""

    split: Optional[str] = None           # force / select a split name
    box_padding: float = 1.0              # multiplies every stored scale
    val_images: Optional[str] = None      # dlc: file of basenames that go to "val"
    val_fraction: Optional[float] = None  # dlc: seeded random fraction of frames for "val"
    seed: int = 0                         # dlc: seed of that draw
    dlc_config: Optional[str] = None      # dlc: config.yaml (skeleton)


def load_json(path: str):
    """Parse a json annotation file; empty or malformed files raise ConversionError."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: annotation file not found; check --annotations")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ConversionError(f"{path}: the annotation file is empty; pass the real json file")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid json ({e}); the file is damaged or not an "
                              f"annotation file") from e


def resolve_image(images_dir: str, relative: str) -> tuple[str, str]:
    """(absolute path, normalized relative path) of an image named relative to the image folder.

    Raises ValueError when the name is absolute or leaves the folder (``../``)."""
    if not isinstance(relative, str) or not relative.strip():
        raise ValueError(f"image name {relative!r} is not a file name")
    rel = relative.replace("\\", "/")
    if os.path.isabs(rel) or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise ValueError(f"image path {relative!r} is absolute; give it relative to the image folder")
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise ValueError(f"image path {relative!r} leaves the image folder")
    return os.path.join(os.path.abspath(images_dir), norm), norm.replace(os.sep, "/")


def json_record_skipper(split: str, annotations: str, index: int, name):
    """skip(reason, message) -> Skip for record `index` of a json list naming image `name`."""
    def skip(reason: str, message: str) -> Skip:
        return Skip(split, str(name if name is not None else annotations), str(index), reason,
                    f"{annotations}: record {index} (image {name}): {message}")
    return skip


def resolve_record_image(images_dir: str, name, skip):
    """(absolute path, relative path) of a record's image, or the Skip saying why not:
    ``path_escape`` for a name that leaves the folder, ``bad_record`` for no name at all."""
    try:
        return resolve_image(images_dir, name)
    except ValueError as e:
        return skip("path_escape" if isinstance(name, str) and name.strip() else "bad_record", str(e))


def image_ids(filenames: list[str]) -> dict[str, int]:
    """Numeric image ids for sources without them: the file stem when every stem is a distinct
    number (MPII's 005808361.jpg -> 5808361), else 1, 2, ... in sorted file-name order."""
    unique = sorted(set(filenames))
    stems = [os.path.splitext(os.path.basename(f))[0] for f in unique]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return {f: int(s) for f, s in zip(unique, stems)}
    return {f: i + 1 for i, f in enumerate(unique)}


def split_from_filename(path: str) -> str:
    """Default split of a single-split annotation file: "val" when its name says so
    (person_keypoints_val2017.json, mpii_val.json, valid.json), else "train"."""
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    tokens = re.split(r"[^a-z]+", stem)
    return "val" if {"val", "valid", "validation"} & set(tokens) else "train"


def validate_split_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", name or ""):
        raise ConversionError(f"split name {name!r}: use letters, digits and '_' only (e.g. train, val)")
    return name


def point_problem(keypoints: np.ndarray) -> Optional[tuple[str, str]]:
    """(reason, message) when a labelled point is NaN/infinite or negative, else None."""
    kp = np.asarray(keypoints, dtype=np.float64)
    labelled = kp[:, 2] > 0
    bad = labelled & ~np.all(np.isfinite(kp[:, :2]), axis=1)
    if bad.any():
        return "nan_coordinate", f"keypoint {int(np.argmax(bad))} has a NaN or infinite coordinate"
    neg = labelled & np.any(kp[:, :2] < 0, axis=1)
    if neg.any():
        i = int(np.argmax(neg))
        return "negative_coordinate", f"keypoint {i} has a negative coordinate {kp[i, :2].tolist()}"
    return None


def is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


def square_box(center: tuple[float, float], scale: float) -> tuple[float, float, float, float]:
    """The person box [x, y, w, h] of a centre + scale: the square of side 200*scale."""
    side = PIXELS_PER_SCALE * scale
    return (center[0] - side / 2.0, center[1] - side / 2.0, side, side)


def padded_center_scale(bbox, box_padding: float) -> tuple[tuple[float, float], float]:
    """Centre and scale of a box (square of its longer side), scale times box_padding."""
    center, scale = box_to_center_scale(*[float(v) for v in bbox])
    return (float(center[0]), float(center[1])), float(scale) * box_padding

