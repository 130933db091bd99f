#!/usr/bin/env python3
"""Train, evaluate and run stacked-hourglass keypoint models.

    python run.py train --tfrecords DIR [flags of the original train.py]
    python run.py eval --model_path M --tfrecords DIR [--result_json F] [--flip_test]
    python run.py predict --model_path M --input IMAGE|FOLDER|VIDEO|WEBCAM_INDEX [--output O]

`train` is the default mode, so the original project's `python run.py --dataset_path ...`
commands work unchanged. The logic lives in model/ and pipeline/; this file only parses flags.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = ("train", "eval", "predict")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x256, got {text!r}") from None
    return h, w


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two steps 'start,stop', got {text!r}") from None
    return a, b


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h with w,h > 0, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")

    def keypoint_files(sp):
        sp.add_argument("--classes_path", help="keypoint names, one a line (default: the records')")
        sp.add_argument("--matchpoint_path", help="flip pairs 'a,b,h' (default: the records')")
        sp.add_argument("--skeleton_path", help="limbs 'a,b,color' (default: the records')")
        sp.add_argument("--sigmas_path", help="OKS sigmas 'name,sigma', one per keypoint (default: "
                        "the records'; COCO's 17 keypoints get COCO's)")

    t = sub.add_parser("train", help="train a model (the default mode)")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--tfrecords", help="folder written by convert_to_tfrecord.py")
    source.add_argument("--dataset_path", help="original layout: a folder with images/ and "
                   "annotations.json; converted to TFRecords once, cached in DATASET_PATH/tfrecords")
    keypoint_files(t)
    t.add_argument("--num_stacks", type=int, default=2)
    t.add_argument("--mobile", action="store_true", help="depthwise-separable convolutions")
    t.add_argument("--tiny", action="store_true", help="128 channels instead of 256")
    t.add_argument("--model_image_size", type=_size, default=(256, 256), help="HxW, multiples of 32")
    t.add_argument("--weights_path", help="start from this .keras model (mismatched heads skipped)")
    t.add_argument("--batch_size", type=int, default=16, help="global batch, split over replicas")
    t.add_argument("--optimizer", choices=("adam", "rmsprop", "sgd"), default="rmsprop")
    t.add_argument("--learning_rate", type=float, default=5e-4)
    t.add_argument("--decay_type", choices=("cosine", "exponential", "piecewise", "polynomial"))
    t.add_argument("--warmup_epochs", type=float, default=0.0)
    t.add_argument("--init_epoch", type=int, default=0)
    t.add_argument("--total_epoch", type=int, default=100)
    t.add_argument("--gpu_num", type=int, help="GPUs to use (default: all visible)")
    t.add_argument("--tpu", nargs="?", const="", help="train on a TPU (optionally its name/address)")
    t.add_argument("--mixed_precision", action="store_true", help="float16 compute, float32 outputs")
    t.add_argument("--jit_compile", action="store_true", help="XLA-compile the train step")
    t.add_argument("--foreground_weight", type=float, default=0.0,
                   help="weigh each heatmap pixel 1 + F x target in the loss (0: plain MSE; 10 leaves "
                        "the all-zero plateau sooner when training from scratch)")
    t.add_argument("--log_dir", default="logs/000",
                   help="outputs and checkpoints; relaunching the same command resumes the run in "
                        "it, a different run there is refused")
    t.add_argument("--overwrite_log_dir", action="store_true",
                   help="delete the training outputs already in --log_dir (checkpoints, summaries, "
                        "val.txt, models) and start from step 0; do not leave it in a command "
                        "that is relaunched to resume")
    t.add_argument("--seed", type=int, help="seed for augmentation and data order (reproducible)")
    t.add_argument("--steps_per_loop", type=int, default=50, help="train steps per tf.function call")
    t.add_argument("--steps_per_epoch", type=int, help="default: train records // batch size")
    t.add_argument("--checkpoint_steps", type=int, default=200)
    t.add_argument("--profile_steps", type=_pair, help="'start,stop' steps for the TF profiler")
    t.add_argument("--sigma", type=float, default=2.0, help="heatmap Gaussian sigma (heatmap px)")
    t.add_argument("--crop_mode", choices=("box", "frame"), default="box",
                   help="box: the record's person box; frame: the whole image letterboxed")
    t.add_argument("--no_augment", action="store_true", help="train without augmentation")
    t.add_argument("--rotated_sampler", choices=("xla", "projective"), default="xla",
                   help="warp of rotated crops: XLA-compiled gathers (faster) or "
                        "ImageProjectiveTransformV3 (no XLA needed)")
    t.add_argument("--data_service", metavar="grpc://HOST:PORT",
                   help="run the training input on tf.data service workers (start them with "
                        "python -m pipeline.data_service); validation stays local")
    t.add_argument("--quiet", action="store_true")

    e = sub.add_parser("eval", help="PCK, torso PCK, COCO OKS AP, PCKh of a .keras, SavedModel or "
                       ".tflite model")
    e.add_argument("--model_path", required=True)
    e.add_argument("--tfrecords", required=True)
    e.add_argument("--split", default="val")
    keypoint_files(e)
    e.add_argument("--batch_size", type=int, default=16)
    e.add_argument("--result_json", help="write COCO-format results here")
    e.add_argument("--annotations", help="COCO json for OKS AP (default: the records' source json)")
    e.add_argument("--flip_test", action="store_true")
    e.add_argument("--refine", choices=("quarter", "dark", "none"),
                   help="sub-pixel refinement (default: the model card's, dark)")
    e.add_argument("--crop_mode", choices=("box", "frame"),
                   help="default: the crop the model was trained with (its model card)")
    e.add_argument("--save_result", help="folder for images with the skeleton drawn")
    e.add_argument("--metrics_json", help="write the metrics here")

    d = sub.add_parser("predict", help="demo on an image, a folder, a video or a webcam")
    d.add_argument("--model_path", required=True)
    d.add_argument("--input", required=True, help="image, folder, video file or webcam index")
    d.add_argument("--output", help="image/folder for images, a video file for video input")
    keypoint_files(d)
    d.add_argument("--bbox", type=_bbox, help="x,y,w,h person box (default: whole image, letterboxed)")
    d.add_argument("--refine", choices=("quarter", "dark", "none"),
                   help="sub-pixel refinement (default: the model card's, dark)")
    d.add_argument("--flip_test", action="store_true")
    d.add_argument("--conf_threshold", type=float, default=0.1, help="hide joints below this")
    d.add_argument("--max_frames", type=int, help="stop a video/webcam after this many frames")
    d.add_argument("--track", action="store_true",
                   help="follow one subject: each frame is read from the box of the previous "
                        "frame's confident keypoints (padded as in training); the first frame, "
                        "and a frame whose mean confidence falls under --track_threshold, is "
                        "searched: read whole (or from --bbox) and, when not found there, in "
                        "4 of the frame's overlapping tiles in turn; its two most confident "
                        "reads are read again from the box of their keypoints, and the most "
                        "confident read of all is kept; a tracked read under halfway from "
                        "--track_threshold to 1 is checked against its box 2x wider")
    d.add_argument("--track_threshold", type=float,
                   help="mean confidence under which --track counts the subject lost and "
                        "searches again (default 0.5)")
    d.add_argument("--smooth", action="store_true",
                   help="One-Euro filter each keypoint over time (frame pixels; a point under "
                        "--conf_threshold keeps its last position)")
    d.add_argument("--min_cutoff", type=float,
                   help="--smooth: cutoff in Hz of a still keypoint; lower is steadier but lags "
                        "(default 1.0)")
    d.add_argument("--beta", type=float,
                   help="--smooth: cutoff rise per subject size per second of keypoint speed; "
                        "higher lags less on fast moves, keeps more jitter (default 4.0)")
    d.add_argument("--csv", help="also write the keypoints as CSV: frame, keypoint, x, y, "
                                 "confidence (frame pixels, pixel centres at +0.5)")
    d.add_argument("--draw_box", action="store_true",
                   help="draw the box each frame was read from (--track or --bbox)")
    return p


def _damaged_records(args, error: BaseException) -> str:
    """The message for a DataLossError met while reading the records of this run."""
    from pipeline.records import data_loss_error
    folder = getattr(args, "tfrecords", None) or os.path.join(args.dataset_path, "tfrecords")
    splits = [args.split] if args.mode == "eval" else None
    return str(data_loss_error(folder, error, splits))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in MODES and argv[0] not in ("-h", "--help")):
        argv = ["train"] + argv
    args = build_parser().parse_args(argv)
    from model import cli
    from pipeline.records import RecordsError, is_data_loss
    from pipeline.sources import ConversionError
    try:
        if args.mode == "train":
            if args.dataset_path:     # the original layout: converted once, then read as records
                from pipeline.convert import records_for_dataset_path
                args.tfrecords = records_for_dataset_path(args.dataset_path, args.classes_path,
                                                          args.matchpoint_path, args.skeleton_path)
            result = cli.train(args)
        elif args.mode == "eval":
            result = cli.evaluate(args)
        else:
            result = cli.predict(args)
    except (cli.UsageError, RecordsError, ConversionError) as e:
        print(f"run.py {args.mode}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:   # a signal stopped training after saving a checkpoint
        if is_data_loss(e):  # a shard damaged after its size was checked: name it
            print(f"run.py {args.mode}: error: {_damaged_records(args, e)}", file=sys.stderr)
            return 2
        from model.trainer import TrainingInterrupted
        if not isinstance(e, TrainingInterrupted):
            raise
        print(f"run.py train: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    if args.mode == "eval":
        print(json.dumps(result, indent=2))
    elif args.mode == "predict":
        print(f"{result['frames']} frame(s) in {result['seconds']} s ({result['fps']} fps)"
              + (f" -> {', '.join(result['outputs'][:3])}" + (" ..." if len(result['outputs']) > 3 else "")
                 if result["outputs"] else ""))
        skipped = result.get("skipped") or []
        if skipped:
            print(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped[:10])}"
                  + (" ..." if len(skipped) > 10 else ""))
        tracking = result.get("tracking")
        if tracking:
            print(f"tracking: {tracking['tracked']} frame(s) tracked, {tracking['search']} "
                  f"searched, {tracking['lost']} lost (mean confidence under the threshold), "
                  f"{tracking['reinitialized']} re-initialization(s), {tracking['widened']} "
                  f"unsure frame(s) read wider")
        for note in result.get("notes") or []:
            print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
