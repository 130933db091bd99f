"""`python -m export`: a trainer's `.keras` model -> SavedModel / TFLite variants.

    python -m export --model_path logs/000/final.keras --output_dir exported \\
        --format saved_model tflite --quantize none float16 dynamic int8 \\
        --representative records/ --num_calibration 200
    python -m export --model_path logs/000/final.keras --output_dir exported \\
        --quantize int8 --representative records/ --with_decoder
    python -m export --model_path logs/000/final.keras --output_dir exported \\
        --quantize none int8 --representative records/ --full_pipeline --frame_size 480x640

Writes the models (each carrying its model card, `model.card`), a json copy of the card
beside each and export_manifest.json
(read by `python -m export.verify`; a second run into the folder adds to it). With
--full_pipeline: one frame -> keypoints file per mode instead (export/pipeline_model.py),
listed under "pipelines". Exit status 2 for a bad flag, path or model.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from export.convert import (
    CALIBRATED,
    FORMATS,
    QUANTIZATIONS,
    ExportConfig,
    ExportError,
    check_model_path,
    onnx_available,
)
from export.records import RecordsError

CALIBRATION_SPLITS = ("train", "val")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_path", required=True, help="a .keras file written by the trainer")
    p.add_argument("--output_dir", required=True, help="folder for the exported models")
    p.add_argument("--format", nargs="+", choices=FORMATS, default=["tflite"],
                   help="saved_model (float32, uint8 image input), tflite (batch 1), onnx (float32, "
                        "optional: needs tf2onnx installed)")
    p.add_argument("--quantize", nargs="+", choices=QUANTIZATIONS, default=["none"],
                   help="TFLite modes: none (float32), float16, dynamic (int8 weights), int8 "
                        "(integer-only, uint8 pixels in), int16x8 (int16 activations, int8 "
                        "weights), mixed (int8 with the layers of largest error kept in float until "
                        "PCK is within 0.5 points of float); the last three need --representative")
    p.add_argument("--representative", default=None,
                   help="TFRecords folder (convert_to_tfrecord.py) for int8 calibration: crops "
                        "of its train split (else val) through the eval parser")
    p.add_argument("--num_calibration", type=int, default=100,
                   help="calibration examples (default 100)")
    p.add_argument("--num_selection", type=int, default=200,
                   help="--quantize mixed: labelled crops its PCK is scored on, the split's crops "
                        "after the calibration ones (default 200)")
    p.add_argument("--with_decoder", action="store_true",
                   help="TFLite models end in the keypoint decoder ('quarter'): outputs keypoints "
                        "[1, K, 2] in crop pixels + confidence [1, K] instead of heatmaps "
                        "(*_decoder.tflite); the SavedModel gets a 'keypoints' signature")
    p.add_argument("--full_pipeline", action="store_true",
                   help="instead, one TFLite file per --quantize mode from frame to keypoints "
                        "(*_pipeline.tflite): inputs image uint8 [1, H, W, 3] and box float32 "
                        "[1, 4] (x, y, w, h frame px), outputs keypoints [1, K, 2] in frame px and "
                        "confidence [1, K]; the crop, decoding and inverse affine inside, in float "
                        "(export/pipeline_model.py); needs --frame_size")
    p.add_argument("--frame_size", default=None, metavar="HxW",
                   help="with --full_pipeline: the largest frame, e.g. 480x640 (smaller frames are "
                        "padded at their bottom and right)")
    return p


def calibration_from_records(tfrecords: str, num_examples: int, card, num_selection: int = 0):
    """Calibration crops: the first `num_examples` eval crops of train (else val), cropped as
    the model card says; with `num_selection`, also the labelled crops ``--quantize mixed``
    scores: the next `num_selection` crops of that split, or, when it has too few, its first
    ones (then calibration crops too, as the card records)."""
    from export.convert import Calibration
    from export.records import Crops, load_crops, pick_split

    split = pick_split(tfrecords, CALIBRATION_SPLITS)
    crops = load_crops(tfrecords, split, card.keypoints, card.input_size, card.output_stride,
                       card.crop_mode, card.padding, max_examples=num_examples + num_selection)
    if not num_selection:
        return Calibration(crops.images, tfrecords, split)
    start = num_examples if len(crops.images) >= num_examples + num_selection else 0
    stop = min(start + num_selection, len(crops.images))
    selection = Crops(tfrecords, split, crops.images[start:stop], crops.keypoints[start:stop],
                      crops.weights[start:stop])
    return Calibration(crops.images[:num_examples], tfrecords, split, selection,
                       selection_overlaps=start < min(num_examples, len(crops.images)))


def run(args) -> dict:
    from configs import KeypointSpec
    from export.convert import export_model, load_source
    from export.records import read_info
    from model.card import card_for_model
    from model.runner import ModelFileError, check_geometry

    config = ExportConfig(formats=tuple(args.format), quantizations=tuple(args.quantize),
                          with_decoder=args.with_decoder)
    model, card = load_source(args.model_path)
    try:   # a Keras file that is not an image -> heatmaps model of this project
        check_geometry(args.model_path, model.inputs[0].shape, model.outputs[-1].shape)
    except ModelFileError as e:
        raise ExportError(str(e)) from e
    if card is None and args.representative:
        info = read_info(args.representative)
        print(f"note: {args.model_path} carries no model card; using the keypoint definition of "
              f"{args.representative}, a box crop, padding 1.25 and sigma 2", flush=True)
        try:
            card = card_for_model(model, KeypointSpec.from_dict(info, args.representative))
        except ValueError as e:
            raise ExportError(str(e)) from e
    calibration = None
    if config.needs_calibration and card is not None:
        selection = args.num_selection if "mixed" in config.quantizations else 0
        calibration = calibration_from_records(args.representative, args.num_calibration, card,
                                               selection)
        print(f"calibration: {len(calibration.images)} crops of {args.representative} "
              f"({calibration.split})" + (f"; mixed scores PCK on {len(calibration.selection.images)} "
                                          f"labelled crops" if selection else ""), flush=True)
    if args.full_pipeline:
        from export.pipeline_model import export_pipelines, parse_frame_size
        return export_pipelines(args.model_path, args.output_dir, parse_frame_size(args.frame_size),
                                config.quantizations, calibration, card, model=model)
    return export_model(args.model_path, args.output_dir, config, calibration, card, model=model)


def check_args(args) -> None:
    """Cheap checks before TensorFlow is imported."""
    check_model_path(args.model_path)
    ExportConfig(tuple(args.format), tuple(args.quantize), args.with_decoder)
    from export.pipeline_model import check_pipeline_args
    check_pipeline_args(args)
    if "onnx" in args.format and not onnx_available():
        raise ExportError("--format onnx needs tf2onnx, an optional extra that is not installed: "
                          "pip install tf2onnx onnx (checked with tf2onnx 1.17.0 and TF 2.21)")
    if args.num_calibration < 1:
        raise ExportError(f"--num_calibration {args.num_calibration}: must be >= 1")
    if args.num_selection < 1:
        raise ExportError(f"--num_selection {args.num_selection}: must be >= 1")
    calibrated = [q for q in args.quantize if q in CALIBRATED] if "tflite" in args.format else []
    if calibrated and not args.representative:
        raise ExportError(f"--quantize {' '.join(calibrated)} needs --representative: a TFRecords "
                          f"folder written by convert_to_tfrecord.py (calibration uses its train split)")
    if args.representative and not os.path.isfile(os.path.join(args.representative, "dataset_info.json")):
        raise ExportError(f"--representative {args.representative}: no dataset_info.json there; "
                          f"pass a folder written by convert_to_tfrecord.py")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        check_args(args)
        manifest = run(args)
    except (FileNotFoundError, ExportError, RecordsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    listed = manifest["pipelines"] if args.full_pipeline else manifest["variants"]
    print(f"{len(listed)} model(s) in {args.output_dir}; manifest "
          f"{os.path.join(args.output_dir, 'export_manifest.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
