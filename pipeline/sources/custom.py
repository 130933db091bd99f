"""The original project's annotation json (``--format custom``; MPII's annotations.json too).

A json list of dicts, one per person::

    {"dataset": "MPI", "isValidation": 0, "img_paths": "015601864.jpg",
     "objpos": [594.0, 257.0], "scale_provided": 3.021,
     "joint_self": [[620.0, 394.0, 1], [1.0, 1.0, 0], ...],     # K x [x, y, v]
     "headboxes": [[627, 100], [706, 198]]}                      # optional

- ``img_paths`` is relative to the ``--images`` folder; absolute paths and ``../`` escapes
  are skipped (``path_escape``).
- Coordinates are 1-based (MATLAB heritage): ours = value - 0.5 (pipeline.coords).
- ``joint_self`` v: 1 = visible -> 2; 0 with real coordinates = labelled but occluded -> 1;
  ``[1, 1, 0]`` or a non-positive coordinate = unlabelled -> 0 (a point marked visible
  with a non-positive coordinate is stored unlabelled and counted in dataset_info.json).
  2 is accepted as visible. NaN/infinite coordinates skip the record (``nan_coordinate``),
  and so does a ``joint_self`` whose length differs from the classes file
  (``wrong_keypoint_count``; when *every* record disagrees the run stops instead).
- ``objpos`` is the person centre, ``scale_provided`` the person height / 200 px. The stored
  person box is the square of side ``200 * scale_provided`` around ``objpos``.
- ``headboxes`` [[x1, y1], [x2, y2]] give ``head_size = 0.6 * diagonal`` (MPII's PCKh
  normalisation); without them head_size is -1.
- Split: ``isValidation`` 1 -> "val", 0 (or missing) -> "train".

**Only a box?** Add ``"bbox": [x, y, w, h]`` (top-left corner and size in pixels, the COCO
convention: a box over the whole first pixel column starts at x = 0) and leave out
``objpos``/``scale_provided``: the centre is the box centre and the scale
``max(w, h) / 200``, exactly as for COCO. To write objpos/scale yourself from such a box:
``objpos = [x + w/2 + 0.5, y + h/2 + 0.5]`` (1-based) and ``scale_provided = max(w, h) / 200``.
When ``bbox`` is present it wins over ``objpos``/``scale_provided``.

MPII data (``--format mpii``) also shifts the centre down by ``15 * scale`` px, the
correction of MPII's rough ``objpos`` used by pose-hg-train and mmpose; custom data is not
shifted (its objpos is taken as the true box centre).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from configs import KeypointSpec
from pipeline.coords import from_one_based
from pipeline.schema import PersonRecord
from pipeline.sources import (
    ConversionError,
    ReaderOptions,
    Skip,
    SourceData,
    image_ids,
    is_positive_number,
    json_record_skipper,
    padded_center_scale,
    resolve_record_image,
    square_box,
)

MPII_CENTER_SHIFT = 15.0   # px per unit of scale, added to MPII's centre y
HEAD_SIZE_FACTOR = 0.6     # PCKh: head size = 0.6 * head-box diagonal


def read_custom(annotations: str, images_dir: str, spec: KeypointSpec, options: ReaderOptions,
                data: list, shift_center: bool = False) -> SourceData:
    """Read the list of person dicts `data` (parsed from `annotations`)."""
    if not isinstance(data, list) or not data:
        raise ConversionError(f"{annotations}: expected a non-empty json list of person records "
                              f"(dataset, isValidation, img_paths, objpos, scale_provided, joint_self)")
    if not any(isinstance(e, dict) and "joint_self" in e for e in data):
        first = next((e for e in data if isinstance(e, dict)), {})
        hint = " (this is the mmpose MPII form: use --format mpii)" if "joints_vis" in first else ""
        raise ConversionError(f"{annotations}: no record has 'joint_self'; the records have keys "
                              f"{sorted(first)}{hint}")
    _check_keypoint_count(annotations, data, spec.num_keypoints)
    records: dict[str, list[PersonRecord]] = {}
    skipped: list[Skip] = []
    unlabelled = {"non_positive_coordinate": 0}
    not_selected = 0
    for index, entry in enumerate(data):
        split = _split_of(entry)
        if options.split and split is not None and split != options.split:
            not_selected += 1
            continue
        result = _record(index, entry, images_dir, spec, options, annotations, shift_center,
                         split or "train", unlabelled)
        if isinstance(result, Skip):
            skipped.append(result)
        else:
            records.setdefault(split, []).append(result)
    ids = image_ids([r.filename for recs in records.values() for r in recs])
    for recs in records.values():
        for r in recs:
            r.image_id = ids[r.filename]
    notes = []
    if not_selected:
        notes.append(f"{not_selected} records of other splits than --split {options.split} not converted")
    return SourceData(spec=spec, records=records, skipped=skipped, notes=notes,
                      unlabelled_points={k: v for k, v in unlabelled.items() if v})


def _check_keypoint_count(annotations: str, data: list, k: int) -> None:
    counts = [len(e["joint_self"]) for e in data
              if isinstance(e, dict) and isinstance(e.get("joint_self"), list)]
    if counts and all(c != k for c in counts):
        raise ConversionError(
            f"{annotations}: every record has {sorted(set(counts))} joints in joint_self but the "
            f"classes file names {k} keypoints; pass the classes file these annotations were made with")


def _split_of(entry) -> Optional[str]:
    if not isinstance(entry, dict):
        return None
    flag = entry.get("isValidation", 0)
    if isinstance(flag, (bool, int, float)) and flag in (0, 1):
        return "val" if flag else "train"
    return None


def _record(index, entry, images_dir, spec, options, annotations, shift_center, split, unlabelled):
    """One json entry -> PersonRecord, or a Skip saying why not."""
    name = entry.get("img_paths") if isinstance(entry, dict) else None
    skip = json_record_skipper(split, annotations, index, name)

    if not isinstance(entry, dict):
        return skip("bad_record", f"expected a dict, got {type(entry).__name__}")
    if _split_of(entry) is None:
        return skip("bad_record", f"isValidation must be 0 or 1, got {entry.get('isValidation')!r}")
    resolved = resolve_record_image(images_dir, name, skip)
    if isinstance(resolved, Skip):
        return resolved
    path, rel = resolved
    joints = entry.get("joint_self")
    if not isinstance(joints, list) or len(joints) != spec.num_keypoints:
        n = len(joints) if isinstance(joints, list) else 0
        return skip("wrong_keypoint_count", f"joint_self has {n} joints, the classes file names "
                    f"{spec.num_keypoints}")
    kp, dropped = _keypoints(joints)
    if isinstance(kp, str):
        return skip(kp, dropped)
    unlabelled["non_positive_coordinate"] += dropped
    if not (kp[:, 2] > 0).any():
        return skip("no_labelled_keypoints", "no labelled keypoint")
    box = _box(entry, options.box_padding, shift_center)
    if isinstance(box, str):
        return skip("bad_box", box)
    bbox, center, scale = box
    return PersonRecord(
        image_path=path, filename=rel, image_id=0, width=0, height=0, keypoints=kp,
        center=center, scale=scale, bbox=bbox, annotation_id=index,
        head_size=_head_size(entry.get("headboxes")))


def _keypoints(joints):
    """K x [x, y, v] 1-based -> ((K, 3) ours, number of visible points with bad coordinates),
    or (reason, message) when the record cannot be used."""
    rows = []
    for i, j in enumerate(joints):
        if not (isinstance(j, list) and len(j) in (2, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in j)):
            return "bad_value", f"joint_self[{i}] = {j!r} is not [x, y, v]"
        rows.append([float(j[0]), float(j[1]), float(j[2]) if len(j) == 3 else 1.0])
    kp = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(kp)):
        i = int(np.argmax(~np.all(np.isfinite(kp), axis=1)))
        return "nan_coordinate", f"joint_self[{i}] = {joints[i]!r} has a NaN or infinite value"
    if not np.all(np.isin(kp[:, 2], (0, 1, 2))):
        return "bad_visibility", f"visibility values {sorted(set(kp[:, 2].tolist()))}; use 0 or 1"
    placeholder = (kp[:, 0] == 1) & (kp[:, 1] == 1) & (kp[:, 2] == 0)
    non_positive = np.any(kp[:, :2] <= 0, axis=1)
    missing = placeholder | non_positive
    dropped = int((non_positive & (kp[:, 2] > 0)).sum())
    out = np.zeros_like(kp)
    out[:, :2] = from_one_based(kp[:, :2])
    out[:, 2] = np.where(kp[:, 2] > 0, 2, 1)
    out[missing] = 0.0
    return out, dropped


def _box(entry, box_padding, shift_center):
    """(bbox, center, scale) in our convention, or a message why the record has no usable box."""
    if "bbox" in entry:
        b = entry["bbox"]
        if not (isinstance(b, list) and len(b) == 4 and all(_finite(v) for v in b)
                and is_positive_number(b[2]) and is_positive_number(b[3])):
            return f"bbox {b!r} is not [x, y, w, h] with w, h > 0"
        bbox = tuple(float(v) for v in b)
        center, scale = padded_center_scale(bbox, box_padding)
        return bbox, center, scale
    pos, scale = entry.get("objpos"), entry.get("scale_provided")
    if not (isinstance(pos, list) and len(pos) == 2 and all(_finite(v) for v in pos)):
        return f"objpos {pos!r} is not [x, y] (or give 'bbox': [x, y, w, h])"
    if not is_positive_number(scale):
        return f"scale_provided {scale!r} is not a positive number"
    cx, cy = (float(v) for v in from_one_based(pos))
    if shift_center:
        cy += MPII_CENTER_SHIFT * float(scale)
    bbox = square_box((cx, cy), float(scale))
    return bbox, (cx, cy), float(scale) * box_padding


def _head_size(headboxes) -> float:
    try:
        (x1, y1), (x2, y2) = headboxes
        x1, y1, x2, y2 = (float(v) for v in (x1, y1, x2, y2))
    except (TypeError, ValueError):
        return -1.0
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return -1.0
    return HEAD_SIZE_FACTOR * math.hypot(x2 - x1, y2 - y1)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
