"""Oracle AP: how much COCO keypoint AP the target encoding + decoding itself loses.

Every person of a COCO keypoints json that the converter keeps (``pipeline.sources.coco``:
non-crowd, >= 1 labelled keypoint) is encoded in memory as the converter would write it
(``pipeline.convert.encode_records``), decoded (``pipeline.decoder``), cropped from its
annotated box as inference would (square box from ``pipeline.coords.box_to_center_scale``,
padding 1.25, eval-mode ``Parser``), its target heatmaps are decoded (``HeatmapCodec.decode``)
and mapped back through the inverse crop matrix, and the result is scored against the same
json by ``model.metrics.coco_keypoint_ap`` (pycocotools' COCOeval('keypoints'), COCO's OKS
sigmas). Keypoints outside the crop have empty heatmaps (weight 0); they are output at their
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
import collections
import sys

import numpy as np


def coco_examples(annotations: str, images: str):
    """(serialized Examples, one per image, keypoint spec, skipped {reason: count}) of a COCO
    keypoints json, read by ``pipeline.sources.coco`` and encoded as the converter does
    (``pipeline.convert.encode_records``), nothing written to disk."""
    from configs import builtin_spec
    from pipeline.convert import encode_records
    from pipeline.sources import ReaderOptions
    from pipeline.sources.coco import read_coco

    spec = builtin_spec("coco")
    source = read_coco(annotations, images, spec, ReaderOptions())
    examples, skipped = [], list(source.skipped)
    for split, records in source.records.items():
        encoded, lost = encode_records(records, spec.names, split)
        examples += encoded
        skipped += lost
    return examples, spec, dict(sorted(collections.Counter(s.reason for s in skipped).items()))


def _results(image_ids, keypoints) -> list:
    from model.metrics import coco_result

    return [coco_result(image_id, kp, np.ones(kp.shape[0])) for image_id, kp in zip(image_ids, keypoints)]


def oracle_ap(annotations: str, images: str, input_size=(256, 256), stride: int = 4,
              sigma: float = 2.0, padding: float = 1.25, batch_size: int = 16) -> dict:
    """{'ceiling', 'argmax', 'quarter', 'subpixel' (DARK): AP, 'num_persons': n, 'skipped':
    {...}, 'max_decode_error_px': float} through the real pipeline (see module docstring)."""
    import tensorflow as tf

    from model.metrics import coco_keypoint_ap
    from pipeline import affine, decoder
    from pipeline.parser import Parser, ParserConfig

    examples, spec, skipped = coco_examples(annotations, images)
    if not examples:
        raise ValueError(f"{annotations}: no non-crowd person with a labelled keypoint")
    config = ParserConfig(input_size=tuple(input_size), stride=stride, sigma=sigma, padding=padding,
                          crop_mode="box")
    parser = Parser(config, spec)
    codec = parser.codec
    ds = decoder.persons(tf.data.Dataset.from_tensor_slices(examples))
    ds = ds.map(lambda person: parser.parse_eval(person)[1])
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

    def ap(crop_xy) -> float:
        results = _results(image_ids, affine.to_original_np(matrices, crop_xy))
        return coco_keypoint_ap(annotations, results, spec.oks_sigmas)["AP"]

    out = {"num_persons": len(image_ids), "skipped": skipped, "ceiling": ap(clamped)}
    for mode, key in (("none", "argmax"), ("quarter", "quarter"), ("dark", "subpixel")):
        xy = np.where(weights, np.concatenate(decoded[mode]), clamped)
        out[key] = ap(xy)
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
