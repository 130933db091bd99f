"""Learning on real frames: the DeepLabCut open-field mouse, held-out pixel error vs a baseline.

    .venv/bin/python -m benchmarks.learn_real [--minutes 20] [--out DIR] [--crop box|frame]
        [--input_size 128x128] [--num_stacks 1] [--tiny] [--mobile] [--sigma 2]
        [--batch_size 16] [--learning_rate 1e-3] [--steps N] [--seed 0]

What it does, in order:

1. Converts ``../shared/data/dlc_openfield`` (116 labelled 640x480 frames, 4 keypoints) with
   ``pipeline.convert.convert_dataset("dlc", ...)``: frames img0000-img0089 go to "train",
   img0090-img0115 to "val" (a generated ``--val_images`` list, ``held_out.txt``), with a
   match-point file ``leftear,rightear,h`` (seen from above, a mirror image swaps the ears).
   The list and the file are written into ``--out``.
2. Trains with ``model.trainer.Trainer`` within ``--minutes`` of wall-clock time
   (CPU unless TensorFlow sees a GPU): a short warm-up run at the full learning rate
   measures steps/s, setup and evaluation time; the main run starts from the warm-up's
   weights and gets the number of steps that fits the rest of the budget (at 90% of the
   measured rate), with one cosine decay over all of them. ``train_seconds`` is the wall
   time of both runs, model builds, tracing, checkpoints and per-epoch evaluations included
   (conversion and the final evaluation are not). On a shared machine the load changes
   during a run, so the run can end somewhat before or after the budget; the figure printed
   is the measured one. With ``--steps N`` it trains exactly N steps instead (no warm-up, no
   time planning). The trainer reports the val PCK after each epoch (monitoring only: the
   model evaluated below is always ``final.keras``, never a best-on-val pick).
3. Evaluates ``final.keras`` on the 26 held-out frames with ``model.evaluation.evaluate_model``
   (through ``model.runner.load_runner``, DARK decoding), with and without the flip test
   (headline: with it, as ``run.py eval --flip_test``): mean / median / per-keypoint error in
   ORIGINAL image pixels, the fraction of points within 5 and 10 px, and the PCK of the original
   project (threshold 0.5 x 6.4·((H+W)/2)/256 heatmap cells, i.e. in crop-input pixels, so it
   is not comparable between input sizes or crop modes; the pixel errors are).
4. Prints the baseline of always predicting each keypoint's mean TRAINING position (128 px
   on the held-out frames; the data README's 139 px is all 116 frames against their own
   mean, also printed) beside the model's error, then machine-greppable ``key: value``
   lines, ending with ``heldout_mean_error_px``, ``heldout_median_error_px``,
   ``heldout_pck`` and ``train_seconds``; everything also goes to ``OUT/learn_real.json``.

Crop modes. ``--crop box`` (default) trains and evaluates on the converter's tight box around
the LABELLED points, padded by the parser's 1.25: held-out evaluation crops from the
labelled box, exactly as COCO's ground-truth-box evaluation does, so its error does not
include finding the mouse in the frame. On unlabelled video there is no labelled box:
prediction uses ``run.py predict --bbox x,y,w,h`` (a box from a detector or from the previous
frame's keypoints) or, without --bbox, the whole frame, which a box-trained model has never
seen at that zoom: for box-free use train with ``--crop frame``. ``--crop frame`` trains and
evaluates on the whole frame letterboxed to the input (no box needed anywhere; default input
192x256 for the 4:3 frames).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLC_DIR = os.path.join(REPO, "..", "shared", "data", "dlc_openfield")
CSV_NAME = "CollectedData_Pranav.csv"
NUM_FRAMES = 116
FIRST_HELD_OUT = 90                 # img0090 ... img0115 are held out
MATCH_POINTS = "leftear,rightear,h\n"
DEFAULT_INPUT = {"box": (128, 128), "frame": (192, 256)}
WITHIN_PX = (5.0, 10.0)             # extra accuracy figures: fraction of points within these
END_S = 5.0                         # the main run's last checkpoint and final model (s)
PLAN_SAFETY = 0.93                  # fraction of the measured rate the plan counts on (the
                                    # machine is shared: its load changes during a run)


def default_recipe(crop_mode: str = "box", input_size: Optional[tuple[int, int]] = None):
    """The benchmark's recipe as one ``model.trainer.TrainConfig`` tree: one tiny stack (128
    channels), sigma 2, batch 16, Adam 1e-3 (one cosine decay per run), rotation ±180° always
    (seen from above, every orientation is plausible), scale 0.75-1.25, flip p 0.5, seed 0.
    Records, keypoint count, log dir and schedule are filled per run (``for_records``,
    ``train_config``)."""
    from model.hourglass import HourglassConfig
    from model.trainer import TrainConfig
    from pipeline.parser import ParserConfig
    size = tuple(input_size or DEFAULT_INPUT[crop_mode])
    return TrainConfig(
        tfrecords="", model=HourglassConfig(num_stacks=1, num_channels=128, mobile=False, input_size=size),
        parser=ParserConfig(input_size=size, sigma=2.0, crop_mode=crop_mode, rotation_deg=180.0,
                            rotation_prob=1.0, scale_range=(0.75, 1.25), flip_prob=0.5),
        batch_size=16, optimizer="adam", learning_rate=1e-3, decay_type="cosine",
        foreground_weight=0.0, seed=0)


def describe(cfg) -> str:
    """One line naming a recipe's model, targets, augmentation and optimizer."""
    h, w = cfg.model.input_size
    p = cfg.parser
    return (f"crop {p.crop_mode}, input {h}x{w}, {cfg.model.num_stacks} stack(s), "
            f"{cfg.model.num_channels} channels{', mobile' if cfg.model.mobile else ''}, sigma "
            f"{p.sigma:g}, batch {cfg.batch_size}, {cfg.optimizer.capitalize()} {cfg.learning_rate:g} "
            f"cosine, rotation ±{p.rotation_deg:g}° (p {p.rotation_prob:g}), scale {p.scale_range[0]:g}-"
            f"{p.scale_range[1]:g}, flip p {p.flip_prob:g} (pairs swapped), "
            + (f"foreground weight {cfg.foreground_weight:g}, " if cfg.foreground_weight else "")
            + f"seed {cfg.seed}")


def for_records(cfg, records: str, num_keypoints: int):
    """`cfg` for these records: their folder and their keypoint count (the model's heads)."""
    return dataclasses.replace(cfg, tfrecords=records,
                               model=dataclasses.replace(cfg.model, num_keypoints=num_keypoints))


# ----------------------------------------------------------------------------- data


def held_out_names() -> list[str]:
    """The held-out frames: img0090.png ... img0115.png."""
    return [f"img{i:04d}.png" for i in range(FIRST_HELD_OUT, NUM_FRAMES)]


def convert_openfield(data_dir: str, out_dir: str) -> tuple[str, dict]:
    """Write held_out.txt, match_point.txt and the records (train 90 / val 26) under
    `out_dir`; returns (records folder, dataset_info)."""
    from configs import atomic_write_text
    from pipeline.convert import ConvertOptions, convert_dataset

    os.makedirs(out_dir, exist_ok=True)
    val_list = os.path.join(out_dir, "held_out.txt")
    atomic_write_text(val_list, "".join(n + "\n" for n in held_out_names()))
    match_points = os.path.join(out_dir, "match_point.txt")
    atomic_write_text(match_points, MATCH_POINTS)
    records = os.path.join(out_dir, "records")
    info = convert_dataset("dlc", os.path.join(data_dir, CSV_NAME), os.path.join(data_dir, "images"),
                           records, options=ConvertOptions(
                               num_workers=1, quiet=True, val_images=val_list,
                               matchpoint_path=match_points,
                               dlc_config=os.path.join(data_dir, "config.yaml")))
    return records, info


@dataclasses.dataclass
class SplitLabels:
    """Labels of one split read back from the records (no image decoded)."""

    filenames: list[str]
    source_ids: list[int]
    keypoints: np.ndarray          # [N, K, 2] original px
    visibility: np.ndarray         # [N, K]
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4)))  # [N, 4] x, y, w, h


def read_split(records: str, split: str, num_keypoints: int) -> SplitLabels:
    """File names, image ids, keypoints, visibility and person boxes of every record of `split`,
    decoded by ``pipeline.decoder`` (no image decoded) from the shards dataset_info.json lists."""
    import tensorflow as tf

    from pipeline import decoder
    from pipeline.records import split_files
    files = split_files(records, split)            # as dataset_info.json lists them, checked
    out = SplitLabels([], [], np.zeros((0, num_keypoints, 2)), np.zeros((0, num_keypoints), int))
    for d in decoder.persons(tf.data.TFRecordDataset(files)).batch(256):
        out.filenames += [os.path.basename(f.decode()) for f in d["filename"].numpy()]
        out.source_ids += [int(s) for s in d["source_id"].numpy()]
        out.keypoints = np.concatenate([out.keypoints, d["keypoints"].numpy().astype(np.float64)])
        out.visibility = np.concatenate([out.visibility, d["visibility"].numpy()])
        out.boxes = np.concatenate([out.boxes, d["bbox"].numpy().astype(np.float64)])
    return out


def error_summary(errors_per_keypoint: list[np.ndarray], names) -> dict:
    """Mean, median, per-keypoint mean/median and within-X-px fractions of pixel errors."""
    every = np.concatenate(errors_per_keypoint)
    return {
        "mean_error_px": float(np.mean(every)),
        "median_error_px": float(np.median(every)),
        "error_px_per_keypoint": {n: {"mean": float(np.mean(e)), "median": float(np.median(e))}
                                  for n, e in zip(names, errors_per_keypoint)},
        **{f"within_{t:g}px": float(np.mean(every <= t)) for t in WITHIN_PX},
        "points": int(every.size),
    }


def point_errors(pred: np.ndarray, truth: SplitLabels) -> list[np.ndarray]:
    """Per keypoint, the distances (original px) over the labelled points; pred [N, K, 2]."""
    d = np.linalg.norm(pred - truth.keypoints, axis=-1)
    return [d[truth.visibility[:, k] > 0, k] for k in range(d.shape[1])]


def mean_position_baseline(train: SplitLabels, held_out: SplitLabels, names) -> dict:
    """Errors on `held_out` of always predicting each keypoint's mean training position."""
    mean = np.zeros(train.keypoints.shape[1:])
    for k in range(mean.shape[0]):
        mean[k] = train.keypoints[train.visibility[:, k] > 0, k].mean(axis=0)
    pred = np.broadcast_to(mean, held_out.keypoints.shape)
    out = error_summary(point_errors(pred, held_out), names)
    out["mean_positions"] = {n: [round(float(v), 2) for v in m] for n, m in zip(names, mean)}
    every = SplitLabels([], [], np.concatenate([train.keypoints, held_out.keypoints]),
                        np.concatenate([train.visibility, held_out.visibility]))
    own_mean = [every.keypoints[every.visibility[:, k] > 0, k].mean(axis=0) for k in range(len(mean))]
    pooled = error_summary(point_errors(np.broadcast_to(own_mean, every.keypoints.shape), every), names)
    out["all_frames_own_mean_error_px"] = pooled["mean_error_px"]   # the data README's figure
    return out


# ----------------------------------------------------------------------------- training


def train_config(recipe, records: str, log_dir: str, *, num_keypoints: int, steps_per_epoch: int,
                 total_epoch: int, decay: Optional[str], weights_path: Optional[str] = None,
                 steps_per_loop: int = 50, verbose: bool = True):
    """The TrainConfig of one run of `recipe` (checkpoints only at epoch ends)."""
    return dataclasses.replace(
        for_records(recipe, records, num_keypoints), log_dir=log_dir, decay_type=decay,
        total_epoch=total_epoch, steps_per_loop=steps_per_loop, steps_per_epoch=steps_per_epoch,
        checkpoint_steps=max(steps_per_epoch, 1), weights_path=weights_path,
        num_summary_images=0, verbose=verbose)


@dataclasses.dataclass
class RunTiming:
    """Wall-clock split of one Trainer run: train-loop calls (steps, s), evaluations (s)."""

    total_s: float = 0.0
    loops: list = dataclasses.field(default_factory=list)
    evals: list = dataclasses.field(default_factory=list)

    def steady_rate(self) -> float:
        """Steps/s of the loop calls after the first (which includes tracing)."""
        later = self.loops[1:] or self.loops
        return sum(n for n, _ in later) / max(sum(t for _, t in later), 1e-9)

    def first_eval_s(self) -> float:
        """The first evaluation (which builds the val dataset and traces the eval step)."""
        return self.evals[0] if self.evals else 0.0

    def later_eval_s(self) -> float:
        """The mean of the evaluations after the first (the first when there is one)."""
        later = self.evals[1:] or self.evals
        return sum(later) / len(later) if later else 0.0

    def overhead_s(self) -> float:
        """Everything that is neither a steady train step nor an evaluation: model build,
        tracing, checkpoints, saving."""
        steady = sum(n for n, _ in self.loops) / self.steady_rate()
        return max(0.0, self.total_s - steady - sum(self.evals))


def run_trainer(cfg, spec, weights_out: Optional[str] = None,
                deadline: Optional[float] = None) -> tuple[dict, RunTiming]:
    """Build a Trainer, train (ending at `deadline`, a ``time.time()``, if it comes first),
    and time its parts (from the trainer's own loop and evaluation timings). `weights_out`
    (``*.weights.h5``): also save the trained weights there, which the next run loads
    without building a model."""
    import tensorflow as tf

    from model.trainer import Trainer, write_run_config
    started = time.time()
    trainer = Trainer(cfg, tf.distribute.get_strategy(), spec)
    write_run_config(cfg.log_dir, cfg, spec)
    summary = trainer.train(deadline)
    if weights_out:
        from configs.files import atomic_path
        with atomic_path(weights_out) as tmp:
            trainer.model.save_weights(tmp)
    timing = RunTiming(total_s=time.time() - started, loops=list(trainer.loop_seconds),
                       evals=list(trainer.eval_seconds))
    return summary, timing


def plan_steps(budget_s: float, spent_s: float, warmup: RunTiming, num_epochs: int) -> int:
    """Steps per epoch of a `num_epochs`-epoch main run that ends within `budget_s` of the
    start, `spent_s` being gone: the warm-up's overhead, first evaluation and later
    evaluations are assumed again (once, once, and per further epoch), steps at PLAN_SAFETY x
    the warm-up's steady rate."""
    evals_s = warmup.first_eval_s() + (num_epochs - 1) * warmup.later_eval_s()
    left = budget_s - spent_s - warmup.overhead_s() - evals_s
    steps = int(left * warmup.steady_rate() * PLAN_SAFETY)
    return max(1, steps // num_epochs)


def train_within_budget(recipe, records: str, spec, out_dir: str, *, budget_s: float,
                        warmup_steps: int, num_epochs: int) -> dict:
    """Warm-up run (two epochs, so that the first evaluation and a later one are both
    timed), then the main run from its weights sized to end within `budget_s`; a main run
    slower than planned is ended at a deadline that leaves it one loop call, one evaluation
    and ``END_S`` within the budget."""
    started = time.time()
    loop = max(1, warmup_steps // 4)
    warm_cfg = train_config(recipe, records, os.path.join(out_dir, "warmup"),
                            num_keypoints=spec.num_keypoints, steps_per_epoch=2 * loop,
                            total_epoch=2, decay=None, steps_per_loop=loop, verbose=False)
    warm_weights = os.path.join(out_dir, "warmup", "warmup.weights.h5")
    warm_summary, warm = run_trainer(warm_cfg, spec, weights_out=warm_weights)
    spe = plan_steps(budget_s, time.time() - started, warm, num_epochs)
    print(f"warm-up: {4 * loop} steps in {warm.total_s:.1f} s ({warm.steady_rate():.2f} steps/s "
          f"steady, {warm.overhead_s():.1f} s setup, evaluations {warm.first_eval_s():.1f} s first, "
          f"{warm.later_eval_s():.1f} s later) "
          f"-> main run {num_epochs} x {spe} steps", flush=True)
    main_cfg = train_config(recipe, records, os.path.join(out_dir, "train"),
                            num_keypoints=spec.num_keypoints, steps_per_epoch=spe,
                            total_epoch=num_epochs, decay="cosine", weights_path=warm_weights,
                            steps_per_loop=min(50, spe))
    loop_s = main_cfg.steps_per_loop / warm.steady_rate()
    deadline = started + budget_s - loop_s - warm.later_eval_s() - END_S
    summary, timing = run_trainer(main_cfg, spec, deadline=deadline)
    total_steps = warm_summary["steps"] + summary["steps"]
    return {**summary, "train_seconds": time.time() - started, "steps": total_steps,
            "main_steps": summary["steps"], "warmup_steps": warm_summary["steps"],
            "planned_steps": warm_summary["steps"] + num_epochs * spe,
            "steps_per_second": timing.steady_rate(), "warmup_steps_per_second": warm.steady_rate()}


def train_fixed_steps(recipe, records: str, spec, out_dir: str, steps: int,
                      num_epochs: int) -> dict:
    """Exactly `steps` steps (rounded up to whole epochs), one cosine decay, no warm-up."""
    epochs = max(1, min(num_epochs, steps))
    spe = math.ceil(steps / epochs)
    cfg = train_config(recipe, records, os.path.join(out_dir, "train"),
                       num_keypoints=spec.num_keypoints, steps_per_epoch=spe, total_epoch=epochs,
                       decay="cosine", steps_per_loop=min(50, spe))
    started = time.time()
    summary, timing = run_trainer(cfg, spec)
    return {**summary, "train_seconds": time.time() - started, "main_steps": summary["steps"],
            "warmup_steps": 0, "steps_per_second": timing.steady_rate()}


def train_as_asked(recipe, records: str, spec, out_dir: str, args) -> dict:
    """Exactly ``args.steps`` steps when given, else within ``args.minutes`` (warm-up + planned
    main run); ``args.epochs`` epochs either way (both benchmarks' command lines)."""
    if args.steps is not None:
        return train_fixed_steps(recipe, records, spec, out_dir, args.steps, args.epochs)
    return train_within_budget(recipe, records, spec, out_dir, budget_s=args.minutes * 60.0,
                               warmup_steps=args.warmup_steps, num_epochs=args.epochs)


def prepare_run(args, data_file: str, recipe_from_args):
    """(recipe, output folder) of a benchmark run, or None after one error line (exit 2): the
    data file must exist and --steps be positive; seeds Python, NumPy and TF with the recipe's
    seed; clears the logs of an earlier run in --out."""
    if not os.path.isfile(data_file):
        print(f"error: {data_file} not found; pass --data (the folder holding it)", file=sys.stderr)
        return None
    if args.steps is not None and args.steps < 1:
        print("error: --steps must be >= 1", file=sys.stderr)
        return None
    recipe = recipe_from_args(args)
    import keras
    keras.utils.set_random_seed(recipe.seed)
    return recipe, fresh_out_dir(args.out)


def fresh_out_dir(out: str) -> str:
    """Absolute `out` without the logs of an earlier run (the Trainer would resume from them)."""
    out = os.path.abspath(out)
    for old in ("warmup", "train"):
        shutil.rmtree(os.path.join(out, old), ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- evaluation


def evaluate_held_out(model_path: str, records: str, spec, crop_mode: str, held_out: SplitLabels,
                      out_dir: str) -> tuple[dict, dict]:
    """evaluate_model's metrics on "val" without and with the flip test (one pass over the
    records), each plus within-X-px fractions from its predictions."""
    from model.evaluation import Scoring, evaluate_models
    from model.runner import load_runner

    runner = load_runner(model_path)
    paths = [os.path.join(out_dir, f"heldout_predictions_{tag}.json") for tag in ("plain", "flip")]
    scorings = [Scoring(runner, spec, crop_mode=crop_mode, flip_test=flip, refine="dark", result_json=path)
                for flip, path in zip((False, True), paths)]
    results = evaluate_models(scorings, records, "val", batch_size=16)
    for metrics, result_json in zip(results, paths):
        with open(result_json, encoding="utf-8") as f:
            predicted = {r["image_id"]: np.asarray(r["keypoints"], np.float64).reshape(-1, 3)[:, :2]
                         for r in json.load(f)}
        if sorted(predicted) != sorted(held_out.source_ids):
            raise RuntimeError(f"{result_json}: predictions for images {sorted(predicted)}, the "
                               f"held-out records are {sorted(held_out.source_ids)}")
        pred = np.stack([predicted[i] for i in held_out.source_ids])
        mine = error_summary(point_errors(pred, held_out), spec.names)
        if abs(mine["mean_error_px"] - metrics["mean_error_px"]) > 0.01:   # results are rounded to 1e-3
            raise RuntimeError(f"mean error from {result_json} ({mine['mean_error_px']:.4f} px) "
                               f"differs from evaluate_model's ({metrics['mean_error_px']:.4f} px)")
        metrics.update({k: v for k, v in mine.items() if k.startswith("within_")})
    return results[0], results[1]


# ----------------------------------------------------------------------------- report


def training_line(trained: dict, batch_size: int) -> str:
    """The report's training line: steps, seconds, rate, and whether the budget's deadline
    ended the main run before its planned steps."""
    line = (f"  training: {trained['steps']} steps ({trained['warmup_steps']} warm-up) in "
            f"{trained['train_seconds']:.0f} s, {trained['steps_per_second']:.2f} steps/s "
            f"({trained['steps_per_second'] * batch_size:.1f} images/s)")
    if trained.get("deadline"):
        line += (f"; slower than planned: the budget's deadline ended it at step "
                 f"{trained['steps']} of {trained['planned_steps']}")
    return line


def _per_keypoint(errors: dict) -> str:
    return ", ".join(f"{n} {v['mean']:.1f}/{v['median']:.1f}" for n, v in errors.items())


def report_lines(recipe, baseline: dict, plain: dict, flipped: dict, trained: dict,
                 pck_threshold_px: float) -> list[str]:
    """The human-readable summary, then one `key: value` line per figure (greppable)."""
    lines = [
        "",
        f"recipe: {describe(recipe)}",
        f"held-out frames: {plain['examples']} (img{FIRST_HELD_OUT:04d}-img{NUM_FRAMES - 1:04d}), "
        f"{baseline['points']} points; errors in original 640x480 pixels, mean/median per keypoint",
        f"  baseline (mean training position): mean {baseline['mean_error_px']:.1f} px, median "
        f"{baseline['median_error_px']:.1f} px ({_per_keypoint(baseline['error_px_per_keypoint'])}); "
        f"all {NUM_FRAMES} frames against their own mean: {baseline['all_frames_own_mean_error_px']:.1f} px "
        f"(the data README's figure)",
    ]
    for name, m in (("model", plain), ("model + flip test", flipped)):
        lines.append(
            f"  {name}: mean {m['mean_error_px']:.2f} px, median {m['median_error_px']:.2f} px "
            f"({_per_keypoint(m['error_px_per_keypoint'])}); within 5/10 px "
            f"{m['within_5px']:.3f}/{m['within_10px']:.3f}; PCK {m['pck']:.4f}")
    lines.append(f"  PCK threshold: {pck_threshold_px:.2f} crop-input px (the original project's "
                 f"0.5 x 6.4·((H+W)/2)/256 heatmap cells)")
    lines.append(training_line(trained, recipe.batch_size))
    lines.append("headline figures: with the flip test (the mirrored crop's heatmaps, ears swapped "
                 "back, averaged in: run.py eval --flip_test); heldout_noflip_* without it")
    per = flipped["error_px_per_keypoint"]
    lines += [
        f"crop_mode: {recipe.parser.crop_mode}",
        f"baseline_mean_error_px: {baseline['mean_error_px']:.2f}",
        f"baseline_median_error_px: {baseline['median_error_px']:.2f}",
        *(f"heldout_error_px_{n}: {v['mean']:.2f}" for n, v in per.items()),
        f"heldout_within_5px: {flipped['within_5px']:.4f}",
        f"heldout_within_10px: {flipped['within_10px']:.4f}",
        f"heldout_noflip_mean_error_px: {plain['mean_error_px']:.2f}",
        f"heldout_noflip_median_error_px: {plain['median_error_px']:.2f}",
        f"heldout_noflip_pck: {plain['pck']:.4f}",
        f"train_steps: {trained['steps']}",
        f"steps_per_second: {trained['steps_per_second']:.3f}",
        f"heldout_mean_error_px: {flipped['mean_error_px']:.2f}",
        f"heldout_median_error_px: {flipped['median_error_px']:.2f}",
        f"heldout_pck: {flipped['pck']:.4f}",
        f"train_seconds: {trained['train_seconds']:.1f}",
    ]
    return lines


# ----------------------------------------------------------------------------- main


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0 or any(v % 32 for v in values):
        raise argparse.ArgumentTypeError(f"expected HxW (or one number), multiples of 32; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget (wall clock)")
    p.add_argument("--steps", type=int, help="train exactly this many steps instead of --minutes")
    p.add_argument("--out", default="learn_real_out", help="folder for records, logs and results")
    p.add_argument("--data", default=DLC_DIR, help="the dlc_openfield folder")
    p.add_argument("--crop", choices=("box", "frame"), default="box",
                   help="box: labelled-points box (GT-box evaluation); frame: whole frame letterboxed")
    p.add_argument("--input_size", type=_size, help="HxW (default 128x128 box, 192x256 frame)")
    add_recipe_arguments(p, default_recipe(), epochs=5)
    return p


def add_recipe_arguments(p: argparse.ArgumentParser, d, epochs: int) -> None:
    """The recipe flags of both learning benchmarks (model, targets, augmentation, optimizer,
    seed, schedule), defaulting to the recipe ``d``'s values; ``with_recipe_args`` applies them."""
    p.add_argument("--num_stacks", type=int, default=d.model.num_stacks)
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=d.model.num_channels == 128,
                   help="128 channels instead of 256")
    p.add_argument("--mobile", action=argparse.BooleanOptionalAction, default=d.model.mobile,
                   help="depthwise-separable convolutions")
    p.add_argument("--sigma", type=float, default=d.parser.sigma, help="heatmap Gaussian sigma (heatmap px)")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--rotation_deg", type=float, default=d.parser.rotation_deg)
    p.add_argument("--rotation_prob", type=float, default=d.parser.rotation_prob)
    p.add_argument("--scale_min", type=float, default=d.parser.scale_range[0])
    p.add_argument("--scale_max", type=float, default=d.parser.scale_range[1])
    p.add_argument("--foreground_weight", type=float, default=d.foreground_weight,
                   help="loss weight 1 + F x target per heatmap pixel (model.loss)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=int, default=epochs, help="epochs of the main run (val PCK after each)")
    p.add_argument("--warmup_steps", type=int, default=240,
                   help="steps of the throughput warm-up (four loops; the last three are timed)")


def with_recipe_args(d, args):
    """The recipe ``d`` with the values of ``add_recipe_arguments``' flags."""
    return dataclasses.replace(
        d, model=dataclasses.replace(d.model, num_stacks=args.num_stacks,
                                     num_channels=128 if args.tiny else 256, mobile=args.mobile),
        parser=dataclasses.replace(d.parser, sigma=args.sigma, rotation_deg=args.rotation_deg,
                                   rotation_prob=args.rotation_prob,
                                   scale_range=(args.scale_min, args.scale_max)),
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        foreground_weight=args.foreground_weight, seed=args.seed)


def recipe_from_args(args):
    """default_recipe() for --crop and --input_size, with the other flags' values."""
    return with_recipe_args(default_recipe(args.crop, args.input_size), args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prepared = prepare_run(args, os.path.join(args.data, CSV_NAME), recipe_from_args)
    if prepared is None:
        return 2
    recipe, out = prepared
    from configs import KeypointSpec, atomic_write_json
    from model.metrics import pck_threshold_px

    t0 = time.time()
    records, info = convert_openfield(args.data, out)
    spec = KeypointSpec.from_dict(info, "dataset_info.json")
    train_labels = read_split(records, "train", spec.num_keypoints)
    held_out = read_split(records, "val", spec.num_keypoints)
    print(f"converted {args.data} in {time.time() - t0:.1f} s: train {info['counts'].get('train')}, "
          f"val {info['counts'].get('val')} records; flip pairs "
          f"{[(spec.names[a], spec.names[b]) for a, b in spec.flip_pairs]}", flush=True)
    baseline = mean_position_baseline(train_labels, held_out, spec.names)
    recipe = for_records(recipe, records, spec.num_keypoints)
    print(f"recipe: {describe(recipe)}", flush=True)

    trained = train_as_asked(recipe, records, spec, out, args)
    plain, flipped = evaluate_held_out(trained["final_model"], records, spec, recipe.parser.crop_mode,
                                       held_out, out)
    threshold = pck_threshold_px(recipe.model.input_size, recipe.parser.stride)
    atomic_write_json(os.path.join(out, "learn_real.json"), {
        "recipe": dataclasses.asdict(recipe), "baseline": baseline, "heldout": flipped,
        "heldout_no_flip_test": plain, "training": trained, "pck_threshold_crop_px": threshold,
        "held_out_frames": held_out.filenames})
    print("\n".join(report_lines(recipe, baseline, plain, flipped, trained, threshold)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
