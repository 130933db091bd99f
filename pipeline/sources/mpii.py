"""MPII Human Pose in either of its two common json forms (detected by their keys).

(a) the mmpose / HRNet list (``mpii_train.json``, ``mpii_val.json``)::

    {"image": "005808361.jpg", "center": [966.0, 340.0], "scale": 4.718488,
     "joints": [[804.0, 711.0], ...], "joints_vis": [1, ...]}        # 16 joints

    - 1-based coordinates: ours = value - 0.5 (pipeline.coords), centre included.
    - The centre is moved down by ``15 * scale`` px, the correction of MPII's rough person
      position that pose-hg-train and mmpose apply (mmpose then also pads the scale by 1.25;
      we do not: our parser pads the crop by 1.25 itself).
    - ``joints_vis`` 0 or a non-positive coordinate (mmpose writes -1 for missing joints)
      = unlabelled (v=0); every other joint v=2 (this form does not keep occlusion).
    - No head boxes: head_size = -1 (PCKh needs them from the original .mat file).
    - The stored person box is the square of side ``200 * scale`` around the shifted centre.
    - Split: ``--split``, else "val" when the file name says val, else "train".

(b) the original project's annotations.json: the custom format (``pipeline.sources.custom``),
    ``dataset`` "MPI", split from ``isValidation``; its centre gets the same 15·scale shift.
"""
from __future__ import annotations

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
    load_json,
    resolve_record_image,
    split_from_filename,
    square_box,
)
from pipeline.sources.custom import MPII_CENTER_SHIFT, read_custom


def read_mpii(annotations: str, images_dir: str, spec: KeypointSpec,
              options: ReaderOptions) -> SourceData:
    """Read either MPII json form; records in file order."""
    data = load_json(annotations)
    if not isinstance(data, list) or not data:
        raise ConversionError(f"{annotations}: expected a non-empty json list of MPII records")
    first = next((e for e in data if isinstance(e, dict)), {})
    if "joint_self" in first:
        return read_custom(annotations, images_dir, spec, options, data, shift_center=True)
    if not {"joints", "joints_vis", "image"} <= set(first):
        raise ConversionError(
            f"{annotations}: records have keys {sorted(first)}; expected the mmpose form (image, "
            f"center, scale, joints, joints_vis) or the original annotations.json (joint_self, ...)")
    counts = {len(e["joints"]) for e in data if isinstance(e, dict) and isinstance(e.get("joints"), list)}
    if counts and spec.num_keypoints not in counts:
        raise ConversionError(
            f"{annotations}: records have {sorted(counts)} joints but the classes file names "
            f"{spec.num_keypoints}; use configs/mpii_classes.txt or the matching --classes_path")
    split = options.split or split_from_filename(annotations)
    records, skipped = [], []
    unlabelled = 0
    for index, entry in enumerate(data):
        result = _record(index, entry, images_dir, spec, options, annotations, split)
        if isinstance(result, Skip):
            skipped.append(result)
        else:
            record, dropped = result
            unlabelled += dropped
            records.append(record)
    ids = image_ids([r.filename for r in records])
    for r in records:
        r.image_id = ids[r.filename]
    return SourceData(spec=spec, records={split: records}, skipped=skipped,
                      unlabelled_points={"non_positive_coordinate": unlabelled} if unlabelled else {})


def _record(index, entry, images_dir, spec, options, annotations, split):
    name = entry.get("image") if isinstance(entry, dict) else None
    skip = json_record_skipper(split, annotations, index, name)

    if not isinstance(entry, dict):
        return skip("bad_record", f"expected a dict, got {type(entry).__name__}")
    resolved = resolve_record_image(images_dir, name, skip)
    if isinstance(resolved, Skip):
        return resolved
    path, rel = resolved
    joints, vis = entry.get("joints"), entry.get("joints_vis")
    k = spec.num_keypoints
    if not (isinstance(joints, list) and isinstance(vis, list) and len(joints) == k and len(vis) == k):
        return skip("wrong_keypoint_count", f"joints/joints_vis do not have {k} entries")
    try:
        xy = np.asarray(joints, dtype=np.float64).reshape(k, 2)
        v = np.asarray(vis, dtype=np.float64).reshape(k)
    except (TypeError, ValueError):
        return skip("bad_value", "joints are not [x, y] number pairs")
    if not np.all(np.isfinite(xy)) or not np.all(np.isfinite(v)):
        return skip("nan_coordinate", "a joint has a NaN or infinite value")
    non_positive = np.any(xy <= 0, axis=1)
    labelled = (v > 0) & ~non_positive
    kp = np.zeros((k, 3), dtype=np.float64)
    kp[:, :2] = np.where(labelled[:, None], from_one_based(xy), 0.0)
    kp[:, 2] = np.where(labelled, 2.0, 0.0)
    if not labelled.any():
        return skip("no_labelled_keypoints", "no labelled joint")
    center, scale = entry.get("center"), entry.get("scale")
    if not (isinstance(center, list) and len(center) == 2 and all(is_positive_number(c) for c in center)
            and is_positive_number(scale)):
        return skip("bad_box", f"center {center!r} / scale {scale!r} are not positive numbers")
    cx, cy = (float(c) for c in from_one_based(center))
    cy += MPII_CENTER_SHIFT * float(scale)
    record = PersonRecord(
        image_path=path, filename=rel, image_id=0, width=0, height=0, keypoints=kp,
        center=(cx, cy), scale=float(scale) * options.box_padding,
        bbox=square_box((cx, cy), float(scale)), annotation_id=index, head_size=-1.0)
    return record, int((non_positive & (v > 0)).sum())
