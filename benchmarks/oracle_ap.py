"""Oracle AP: how much COCO keypoint AP the target encoding + decoding itself loses.

For every non-crowd person with >= 1 labelled keypoint of a COCO keypoints json, an
Example is built in memory (``pipeline.schema.encode_example``), decoded
(``pipeline.decoder``), cropped from its annotated box as inference would (square box from
``pipeline.coords.box_to_center_scale``, padding 1.25, eval-mode ``Parser``), its target
heatmaps are decoded (``HeatmapCodec.decode``) and mapped back through the inverse crop
matrix, and the result is scored with pycocotools' COCOeval('keypoints') against the same
json. Keypoints outside the crop have empty heatmaps (weight 0); they are output at their
position clamped to the crop window, which is also what the ceiling assumes: the AP of the
exact coordinates clamped to the crop window. All detections get score 1 and v = 1.

    python -m benchmarks.oracle_ap \
        --annotations ../shared/data/coco_val_mini/annotations/person_keypoints_val2017_mini.json \
        --images ../shared/data/coco_val_mini/images

prints ``oracle_AP_ceiling``, ``oracle_AP_argmax``, ``oracle_AP_quarter`` and, last,
``oracle_AP_subpixel`` (DARK).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from typing import Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: python benchmarks/oracle_ap.py
    sys.path.insert(0, REPO)

from pipeline import coords  # noqa: E402
from pipeline.schema import PersonRecord, encode_example  # noqa: E402

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG"


def coco_person_records(annotations: str, images: str, min_keypoints: int = 1):
    """(records, keypoint_names, skipped) for the non-crowd person instances of a COCO
    keypoints json with at least ``min_keypoints`` labelled keypoints, in annotation order.
    ``skipped`` counts what was left out and why."""
    with open(annotations, encoding="utf-8") as f:
        data = json.load(f)
    cats = [c for c in data.get("categories", []) if c.get("keypoints")]
    if not cats:
        raise ValueError(f"{annotations}: no category with 'keypoints'; not a COCO keypoints json")
    names = list(cats[0]["keypoints"])
    cat_id = cats[0]["id"]
    image_by_id = {im["id"]: im for im in data["images"]}
    records, skipped = [], {"crowd": 0, "too_few_keypoints": 0, "other_category": 0}
    for ann in data["annotations"]:
        if ann.get("category_id") != cat_id:
            skipped["other_category"] += 1
            continue
        if ann.get("iscrowd", 0):
            skipped["crowd"] += 1
            continue
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        if kp.shape[0] != len(names):
            raise ValueError(f"{annotations}: annotation {ann['id']} has {kp.shape[0]} keypoints, "
                             f"the category lists {len(names)}")
        if int((kp[:, 2] > 0).sum()) < min_keypoints:
            skipped["too_few_keypoints"] += 1
            continue
        im = image_by_id[ann["image_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        center, scale = coords.box_to_center_scale(x, y, w, h)
        records.append(PersonRecord(
            image_path=os.path.join(images, im["file_name"]), filename=im["file_name"],
            image_id=int(im["id"]), width=int(im["width"]), height=int(im["height"]),
            keypoints=kp, center=center, scale=scale, bbox=(x, y, w, h),
            annotation_id=int(ann["id"]), area=float(ann.get("area", w * h))))
    return records, names, skipped


def serialize_records(records: Sequence[PersonRecord], keypoint_names: Sequence[str]) -> list[bytes]:
    """Serialized Examples of ``records``, reading each image file once (JPEG/PNG kept as is)."""
    cache: dict[str, tuple[bytes, str]] = {}
    out = []
    for rec in records:
        if rec.image_path not in cache:
            if not os.path.isfile(rec.image_path):
                raise FileNotFoundError(f"{rec.image_path}: image of annotation {rec.annotation_id} "
                                        "not found; check --images")
            with open(rec.image_path, "rb") as f:
                blob = f.read()
            if blob.startswith(JPEG_MAGIC):
                fmt = "jpeg"
            elif blob.startswith(PNG_MAGIC):
                fmt = "png"
            else:
                raise ValueError(f"{rec.image_path}: neither JPEG nor PNG; convert it first")
            cache[rec.image_path] = (blob, fmt)
        blob, fmt = cache[rec.image_path]
        out.append(encode_example(rec, blob, fmt, keypoint_names, reencoded=False))
    return out


def _coco_ap(annotations: str, results: list) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _results(image_ids, keypoints) -> list:
    out = []
    for image_id, kp in zip(image_ids, keypoints):
        flat = np.concatenate([kp, np.ones((kp.shape[0], 1))], axis=1).reshape(-1)
        out.append({"image_id": int(image_id), "category_id": 1,
                    "keypoints": [round(float(v), 3) for v in flat], "score": 1.0})
    return out


def oracle_ap(annotations: str, images: str, input_size=(256, 256), stride: int = 4,
              sigma: float = 2.0, padding: float = 1.25, batch_size: int = 16) -> dict:
    """{'ceiling', 'argmax', 'quarter', 'subpixel' (DARK): AP, 'num_persons': n, 'skipped':
    {...}, 'max_decode_error_px': float} through the real pipeline (see module docstring)."""
    import tensorflow as tf

    from configs.keypoints import KeypointSpec
    from pipeline import affine, decoder
    from pipeline.parser import Parser, ParserConfig

    records, names, skipped = coco_person_records(annotations, images)
    if not records:
        raise ValueError(f"{annotations}: no non-crowd person with a labelled keypoint")
    config = ParserConfig(input_size=tuple(input_size), stride=stride, sigma=sigma, padding=padding,
                          crop_mode="box")
    parser = Parser(config, KeypointSpec(tuple(names)))
    codec = parser.codec
    ds = tf.data.Dataset.from_tensor_slices(serialize_records(records, names))
    ds = ds.map(lambda s: parser.parse_eval(decoder.decode(s))[1])
    ds = ds.batch(batch_size)

    decode = tf.function(lambda hm: {m: codec.decode(hm, m)[0] for m in ("none", "quarter", "dark")})
    image_ids, crop_gt, weights, matrices = [], [], [], []
    decoded = {m: [] for m in ("none", "quarter", "dark")}
    for labels in ds:
        image_ids += [int(s) for s in labels["source_id"].numpy()]
        crop_gt.append(labels["keypoints"].numpy())
        weights.append(labels["weights"].numpy())
        matrices.append(labels["matrix"].numpy())
        for mode, xy in decode(labels["heatmaps"]).items():
            decoded[mode].append(xy.numpy())
    crop_gt = np.concatenate(crop_gt)
    weights = np.concatenate(weights)[..., np.newaxis] > 0
    matrices = np.concatenate(matrices)
    window = np.array([input_size[1], input_size[0]], np.float64)
    clamped = np.clip(crop_gt, 0.0, window)

    def back(crop_xy):
        return affine.to_original_np(matrices, crop_xy)

    out = {"num_persons": len(records), "skipped": skipped,
           "ceiling": _coco_ap(annotations, _results(image_ids, back(clamped)))}
    for mode, key in (("none", "argmax"), ("quarter", "quarter"), ("dark", "subpixel")):
        xy = np.where(weights, np.concatenate(decoded[mode]), clamped)
        out[key] = _coco_ap(annotations, _results(image_ids, back(xy)))
        if mode == "dark":
            err = np.abs(xy - crop_gt)[np.broadcast_to(weights, xy.shape)]
            out["max_decode_error_px"] = float(err.max()) if err.size else 0.0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="COCO person keypoints json")
    p.add_argument("--images", required=True, help="folder of the json's image files")
    p.add_argument("--input-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--sigma", type=float, default=2.0)
    p.add_argument("--padding", type=float, default=1.25)
    args = p.parse_args(argv)
    r = oracle_ap(args.annotations, args.images, tuple(args.input_size), args.stride, args.sigma,
                  args.padding)
    print(f"persons: {r['num_persons']} (skipped: {r['skipped']})")
    print(f"max_decode_error_crop_px (dark, in-crop keypoints): {r['max_decode_error_px']:.4f}")
    print(f"oracle_AP_ceiling: {r['ceiling']:.4f}")
    print(f"oracle_AP_argmax: {r['argmax']:.4f}")
    print(f"oracle_AP_quarter: {r['quarter']:.4f}")
    print(f"oracle_AP_subpixel: {r['subpixel']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
