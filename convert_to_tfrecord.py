"""Convert COCO / MPII / custom / DeepLabCut / LSP annotations to sharded TFRecords.

    python convert_to_tfrecord.py --format coco \\
        --annotations annotations/person_keypoints_val2017.json --images val2017 \\
        --output records/coco --split val --num_shards 8 --verify
    python convert_to_tfrecord.py --format custom --annotations data/annotations.json \\
        --images data/images --output records/mine --classes_path my_classes.txt
    python convert_to_tfrecord.py --format dlc --annotations CollectedData_Pranav.csv \\
        --images labeled-data/m4s1 --config config.yaml --val_fraction 0.2 --output records/dlc
    python convert_to_tfrecord.py --format lsp --annotations lspet/joints.mat \
        --images lspet/images --val_fraction 0.1 --output records/lspet

Exit status: 0 done, 2 unusable input (nothing written), 3 --verify found a mismatch.
The work is done by pipeline.convert.convert_dataset; see its docstring for the guarantees.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from configs import KeypointSpecError  # noqa: E402
from pipeline.convert import FORMATS, ConversionError, ConvertOptions, VerifyError, convert_dataset  # noqa: E402
from pipeline.records import RecordsError  # noqa: E402

MAX_LISTED_PROBLEMS = 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--annotations", required=True,
                   help="json (coco/mpii/custom), DLC CSV or LSP joints.mat")
    p.add_argument("--images", required=True, help="image folder the annotations refer to")
    p.add_argument("--output", required=True, help="folder for the shards and dataset_info.json")
    p.add_argument("--split", help="split name (default: from the file: isValidation / file name / train)")
    p.add_argument("--num_shards", type=int, help="shards per split (default: one per 1000 records)")
    p.add_argument("--classes_path",
                   help="keypoint names (coco/mpii/lsp: configs/ defaults; custom: required)")
    p.add_argument("--matchpoint_path", help="flip pairs file")
    p.add_argument("--skeleton_path", help="skeleton file")
    p.add_argument("--sigmas_path", help="OKS sigmas, 'name,sigma' a line, one per keypoint (for OKS "
                   "AP; COCO's 17 keypoints get COCO's without it)")
    p.add_argument("--box_padding", type=float, default=1.0, help="multiplies every person box scale")
    p.add_argument("--num_workers", type=int, default=0, help="worker processes (0: all cores)")
    p.add_argument("--config", dest="dlc_config", help="dlc: DeepLabCut config.yaml (skeleton)")
    p.add_argument("--val_images", help="dlc/lsp: file listing the image basenames of the val split")
    p.add_argument("--val_fraction", type=float, help="dlc/lsp: fraction of images for val (seeded)")
    p.add_argument("--seed", type=int, default=0, help="dlc/lsp: seed of --val_fraction")
    p.add_argument("--verify", action="store_true", help="read every shard back and check the counts")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    options = ConvertOptions(
        split=args.split, num_shards=args.num_shards, box_padding=args.box_padding,
        num_workers=args.num_workers, classes_path=args.classes_path,
        matchpoint_path=args.matchpoint_path, skeleton_path=args.skeleton_path,
        sigmas_path=args.sigmas_path,
        dlc_config=args.dlc_config, val_images=args.val_images, val_fraction=args.val_fraction,
        seed=args.seed, quiet=args.quiet, verify=args.verify)
    try:
        info = convert_dataset(args.format, args.annotations, args.images, args.output, options=options)
    except (ConversionError, KeypointSpecError, RecordsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except VerifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(summary(info, args.output))
    return 0


def summary(info: dict, output: str) -> str:
    """A few lines: persons (and images) per split, skips per reason, the first problems."""
    def written(split: str, count: int) -> str:
        images = (info["splits"].get(split) or {}).get("images")
        return f"{split} {count} persons" + (f" in {images} images" if images is not None else "")

    lines = [f"wrote {output}: " + ", ".join(written(k, v) for k, v in info["counts"].items())
             + f", {info['num_keypoints']} keypoints"]
    problems, notes = [], []
    for split, entry in info["splits"].items():
        if entry["skipped"]["total"]:
            reasons = ", ".join(f"{r} {n}" for r, n in entry["skipped"]["by_reason"].items())
            lines.append(f"  {split}: skipped {entry['skipped']['total']} ({reasons})")
            missing = [r for r in entry["skipped"]["records"] if r["reason"] == "missing_image"]
            if len(missing) > MAX_LISTED_PROBLEMS:   # a partial copy of the set: one line
                lines.append(f"  {split}: {len(missing)} entries have no image file (first: "
                             f"{missing[0]['file']}); all are listed in dataset_info.json")
            problems += [r["message"] for r in entry["skipped"]["records"]
                         if r["reason"] not in ("crowd", "no_labelled_keypoints")
                         and not (r["reason"] == "missing_image" and len(missing) > MAX_LISTED_PROBLEMS)]
        if entry["reencoded"]["total"]:
            lines.append(f"  {split}: {entry['reencoded']['total']} records with images re-encoded to PNG")
        notes += [n for n in entry["notes"] if n not in notes]   # a source's note, once
    lines += [f"  note: {n}" for n in notes]
    for p in problems[:MAX_LISTED_PROBLEMS]:
        lines.append(f"  skipped: {p}")
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... {len(problems) - MAX_LISTED_PROBLEMS} more in dataset_info.json")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
