"""COCO person_keypoints json (2014 or 2017) -> one PersonRecord per person instance.

- Coordinates are stored unchanged: COCO already uses our convention (pipeline.coords).
- Centre and scale come from the annotated box: ``box_to_center_scale`` (square of the
  longer side, scale = max(w, h) / 200), times ``box_padding``.
- Skipped and counted: crowd instances (``crowd``), instances with no labelled keypoint
  (``no_labelled_keypoints``), boxes with no area (``empty_box``), keypoint lists of the
  wrong length (``wrong_keypoint_count``), visibility outside 0/1/2 (``bad_visibility``),
  NaN or negative labelled coordinates, annotations of unknown images or image paths
  leaving the image folder.
- Stored per record: ``area`` (the annotation's segment area), the annotation id, and the
  image id as ``source_id``; width/height from the json are checked against the image.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from configs import KeypointSpec
from pipeline.schema import PersonRecord
from pipeline.sources import (
    ConversionError,
    ReaderOptions,
    Skip,
    SourceData,
    is_positive_number,
    load_json,
    padded_center_scale,
    point_problem,
    resolve_image,
    split_from_filename,
)


def read_coco(annotations: str, images_dir: str, spec: KeypointSpec,
              options: ReaderOptions) -> SourceData:
    """Read a COCO keypoints json with pycocotools; records sorted by (image id, ann id)."""
    data = load_json(annotations)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) \
            or not isinstance(data.get("images"), list):
        raise ConversionError(f"{annotations}: not a COCO json (needs 'images' and 'annotations' "
                              f"lists); for a list of records use --format custom or mpii")
    categories = {c["id"]: c for c in data.get("categories", [])
                  if isinstance(c, dict) and c.get("keypoints")}
    if not categories:
        raise ConversionError(f"{annotations}: no category with 'keypoints'; this is not a "
                              f"person_keypoints file")
    k = spec.num_keypoints
    for cat in categories.values():
        if len(cat["keypoints"]) != k:
            raise ConversionError(
                f"{annotations}: category {cat.get('name')!r} has {len(cat['keypoints'])} keypoints "
                f"but the classes file names {k}; pass the matching --classes_path")

    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise ConversionError(f"{annotations}: malformed COCO json ({type(e).__name__}: {e}); every "
                              f"image and annotation needs an 'id' and 'image_id'") from e

    split = options.split or split_from_filename(annotations)
    records: list[PersonRecord] = []
    skipped: list[Skip] = []
    anns = sorted((a for a in data["annotations"] if a.get("category_id") in categories),
                  key=lambda a: (a.get("image_id", -1), a.get("id", -1)))
    for ann in anns:
        rec = _record(ann, coco.imgs, categories, images_dir, spec, options, annotations, split)
        if isinstance(rec, Skip):
            skipped.append(rec)
        else:
            records.append(rec)
    return SourceData(spec=spec, records={split: records}, skipped=skipped)


def _record(ann, images, categories, images_dir, spec, options, annotations, split):
    """One annotation -> PersonRecord, or a Skip saying why not."""
    ann_id = ann.get("id")
    img = images.get(ann.get("image_id"))

    def skip(reason, message, file=None):
        name = file if file is not None else (img or {}).get("file_name", annotations)
        return Skip(split, str(name), str(ann_id), reason, f"{annotations}: annotation {ann_id} "
                    f"(image {name}): {message}")

    if not isinstance(ann_id, int):
        return skip("bad_value", f"annotation id {ann_id!r} is not an integer")
    if img is None:
        return skip("unknown_image", f"image_id {ann.get('image_id')} is not in 'images'", annotations)
    if ann.get("iscrowd", 0):
        return skip("crowd", "crowd instance (iscrowd=1)")
    kp = ann.get("keypoints")
    if not isinstance(kp, list) or len(kp) != 3 * spec.num_keypoints:
        n = len(kp) if isinstance(kp, list) else 0
        return skip("wrong_keypoint_count", f"{n} keypoint values, expected 3 x {spec.num_keypoints}")
    try:
        kp = np.asarray(kp, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        return skip("bad_value", "keypoints are not numbers")
    if not np.all(np.isin(kp[:, 2], (0, 1, 2))):
        values = sorted(set(kp[:, 2].tolist()))
        return skip("bad_visibility", f"visibility values {values}; COCO uses 0, 1, 2")
    if not (kp[:, 2] > 0).any():
        return skip("no_labelled_keypoints", "no labelled keypoint (box-only instance)")
    problem = point_problem(kp)
    if problem:
        return skip(*problem)
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and is_positive_number(bbox[2])
            and is_positive_number(bbox[3])):
        return skip("empty_box", f"bbox {bbox} has no area")
    try:
        path, rel = resolve_image(images_dir, img.get("file_name"))
    except ValueError as e:
        return skip("path_escape", str(e))
    width, height = img.get("width"), img.get("height")
    if width is None and height is None:
        width, height = 0, 0    # not given: taken from the image
    elif not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        return skip("bad_image_size", f"image size {width!r} x {height!r} in the json is not two "
                    f"positive whole numbers; fix the images entry of {img.get('file_name')!r}")
    area = ann.get("area")
    center, scale = padded_center_scale(bbox, options.box_padding)
    kp[kp[:, 2] == 0, :2] = 0.0
    return PersonRecord(
        image_path=path, filename=rel, image_id=int(img["id"]), width=width, height=height,
        keypoints=kp, center=center, scale=scale, bbox=tuple(float(v) for v in bbox),
        annotation_id=int(ann_id), area=float(area) if is_positive_number(area) else None,
        class_text=str(categories[ann["category_id"]].get("name", "person")))
