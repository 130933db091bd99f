"""Learning human pose on real photos: LSPET, held-out torso PCK against a mean-pose baseline,
and the int8 TFLite model beside the float one.

    .venv/bin/python -m benchmarks.learn_human [--out DIR] [--minutes 30] [--steps N]
        [--input_size 128x128] [--num_stacks 1] [--mobile] [--tiny] [--sigma 2] ...

What it does, in order:

1. Links images im00001-im04000 of ``../shared/data/lspet`` (never any image past im04000,
   even when the folder holds more) into ``OUT/images`` and converts ``joints.mat`` with
   ``convert_dataset("lsp", ...)``: im00001-im03500 to "train", im03501-im04000 (listed in
   ``OUT/held_out.txt``) to "val". Invisible joints are unlabelled; the person box is the box of
   the visible joints (``pipeline.sources.lsp``).
2. Trains with ``model.trainer.Trainer`` within ``--minutes`` of wall-clock time, as
   ``benchmarks.learn_real`` does (a short warm-up measures steps/s; the main run gets the
   steps that fit the rest of the budget, one cosine decay). The trainer's per-epoch val
   figures are monitoring only: the model evaluated is always the last one (``final.keras``).
3. Evaluates that model on the 500 held-out photos with ``model.evaluation.evaluate_model``
   (GT-box crops, DARK decoding), with and without the flip test: PCK@0.2 and PCK@0.1
   normalized by torso size (``model.metrics``: a shoulder to the opposite hip) overall and per
   joint, and the mean error in original-image pixels.
4. Baseline: the mean training pose, each keypoint's mean position relative to its person box
   (centre, longer side), placed in each held-out person's box.
5. Writes ``OUT/lsp_hourglass.keras`` (+ its json), exports ``OUT/lsp_hourglass_int8.tflite``
   (full integer, uint8 input, calibrated on crops of the training records) with
   ``python -m export`` and evaluates it on the same held-out photos (``evaluate_models``: the
   three evaluations of steps 3 and 5 share one pass over the records).
6. Prints a summary and ``key: value`` lines (the last ones: ``heldout_pck_torso@0.2``,
   ``int8_pck_torso@0.2``, ``train_seconds``); everything also goes to ``OUT/learn_human.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import learn_real  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LSPET_DIR = os.path.join(REPO, "..", "shared", "data", "lspet")
LAST_TRAIN = 3500              # im00001 ... im03500 train
LAST_ALLOWED = 4000            # im03501 ... im04000 held out; never anything past im04000
MODEL_NAME = "lsp_hourglass"
NUM_CALIBRATION = 200


def human_recipe(input_size: tuple[int, int] = (96, 96)):
    """The recipe as one ``model.trainer.TrainConfig`` tree (see the README's LSP section for
    what was tried and what each gave); records, keypoint count, log dir and schedule are
    filled per run (``learn_real.for_records``, ``learn_real.train_config``)."""
    from model.hourglass import HourglassConfig
    from model.trainer import TrainConfig
    from pipeline.parser import ParserConfig
    return TrainConfig(
        tfrecords="", model=HourglassConfig(num_stacks=1, num_channels=128, mobile=True,
                                            input_size=input_size),
        parser=ParserConfig(input_size=input_size, sigma=1.5, crop_mode="box", rotation_deg=30.0,
                            rotation_prob=0.5, scale_range=(0.75, 1.25), flip_prob=0.5),
        batch_size=16, optimizer="adam", learning_rate=6e-3, decay_type="cosine",
        foreground_weight=10.0, seed=0)


def image_name(index: int) -> str:
    """LSPET's file name of entry `index` (1-based)."""
    return f"im{index:05d}.jpg"


def link_images(data_dir: str, out_dir: str) -> tuple[str, int]:
    """OUT/images holding links to im00001..im04000 of `data_dir` (those present); returns
    (folder, number linked). Images past im04000 are never linked."""
    folder = os.path.join(out_dir, "images")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    linked = 0
    for i in range(1, LAST_ALLOWED + 1):
        src = os.path.join(os.path.abspath(data_dir), "images", image_name(i))
        if os.path.isfile(src):
            os.symlink(src, os.path.join(folder, image_name(i)))
            linked += 1
    return folder, linked


def convert_lspet(data_dir: str, out_dir: str) -> tuple[str, dict]:
    """held_out.txt and the records (train im00001-03500, val im03501-04000) under `out_dir`."""
    from configs import atomic_write_text
    from pipeline.convert import ConvertOptions, convert_dataset

    os.makedirs(out_dir, exist_ok=True)
    images, linked = link_images(data_dir, out_dir)
    if linked == 0:
        raise FileNotFoundError(f"{data_dir}/images holds none of im00001-im{LAST_ALLOWED:05d}.jpg")
    held_out = os.path.join(out_dir, "held_out.txt")
    names = [image_name(i) for i in range(LAST_TRAIN + 1, LAST_ALLOWED + 1)]
    atomic_write_text(held_out, "".join(n + "\n" for n in names))
    records = os.path.join(out_dir, "records")
    info = convert_dataset("lsp", os.path.join(data_dir, "joints.mat"), images, records,
                           options=ConvertOptions(quiet=True, val_images=held_out, num_shards=4))
    return records, info


def mean_pose_baseline(train: "learn_real.SplitLabels", held_out: "learn_real.SplitLabels") -> np.ndarray:
    """Predictions [N, K, 2] for `held_out`: each keypoint's mean training position relative to
    the person box (centre, longer side), placed in each held-out box."""
    def normalized(labels):
        boxes = labels.boxes
        center = boxes[:, :2] + boxes[:, 2:] / 2.0
        side = boxes[:, 2:].max(axis=1)
        return (labels.keypoints - center[:, None]) / side[:, None, None], center, side

    rel, _, _ = normalized(train)
    k = rel.shape[1]
    mean = np.stack([rel[train.visibility[:, j] > 0, j].mean(axis=0) for j in range(k)])
    _, center, side = normalized(held_out)
    return center[:, None] + mean[None] * side[:, None, None]


def torso_figures(pred: np.ndarray, truth: "learn_real.SplitLabels", names) -> dict:
    """PCK@0.2 / @0.1 (torso) overall and per joint, and the mean pixel error, of predictions
    [N, K, 2] in original pixels (the same model.metrics functions as evaluate_model)."""
    from model.metrics import torso_diagonals, torso_pck_counts, torso_pck_metrics
    labelled = truth.visibility > 0
    sums = torso_pck_counts(pred, truth.keypoints, labelled, torso_diagonals(names))
    out = torso_pck_metrics(names, *sums)
    out["mean_error_px"] = float(np.mean(np.concatenate(learn_real.point_errors(pred, truth))))
    return out


def evaluate_files(scored: list[tuple[str, bool, str]], records: str, spec, held_out,
                   out_dir: str) -> list[dict]:
    """evaluate_model's torso PCK and errors on the held-out records of each (model file,
    flip test, tag), all in one pass over the records."""
    from model.evaluation import Scoring, evaluate_models
    from model.runner import load_runner

    runners = {path: load_runner(path) for path in dict.fromkeys(path for path, _, _ in scored)}
    scorings = [Scoring(runners[path], spec, crop_mode="box", flip_test=flip, refine="dark",
                        result_json=os.path.join(out_dir, f"heldout_predictions_{tag}.json"))
                for path, flip, tag in scored]
    results = evaluate_models(scorings, records, "val", batch_size=16)
    for (path, _, _), metrics in zip(scored, results):
        if metrics["examples"] != len(held_out.source_ids):
            raise RuntimeError(f"{path}: evaluated {metrics['examples']} held-out records, "
                               f"expected {len(held_out.source_ids)}")
    return results


def export_int8(model_path: str, records: str, out_dir: str) -> str:
    """`python -m export ... --quantize int8` of the model; returns the .tflite path."""
    from export.__main__ import main as export_main
    code = export_main(["--model_path", model_path, "--output_dir", out_dir, "--format", "tflite",
                        "--quantize", "int8", "--representative", records,
                        "--num_calibration", str(NUM_CALIBRATION)])
    path = os.path.join(out_dir, f"{MODEL_NAME}_int8.tflite")
    if code != 0 or not os.path.isfile(path):
        raise RuntimeError(f"export of {model_path} failed (exit {code}); expected {path}")
    return path


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def report_lines(recipe, baseline: dict, plain: dict, flipped: dict, int8: dict, trained: dict,
                 names, sizes: dict) -> list[str]:
    """The summary table, then one `key: value` line per figure (greppable)."""
    rows = (("baseline: mean training pose in the box", baseline), ("model", plain),
            ("model + flip test", flipped), ("int8 TFLite + flip test", int8))
    lines = ["", f"recipe: {learn_real.describe(recipe)}",
             f"held-out photos: {plain['examples']} (im{LAST_TRAIN + 1:05d}-im{LAST_ALLOWED:05d}); "
             f"PCK over visible joints, normalized by the torso (a shoulder to the opposite hip)",
             f"  {'':42s} PCK@0.2  PCK@0.1  mean err px"]
    for label, m in rows:
        lines.append(f"  {label:42s} {_fmt(m['pck_torso@0.2'])}    {_fmt(m['pck_torso@0.1'])}    "
                     f"{m['mean_error_px']:.1f}")
    lines.append("  per joint PCK@0.2 (model + flip test): " + ", ".join(
        f"{n} {_fmt(flipped['pck_torso@0.2_per_keypoint'].get(n))}" for n in names))
    lines.append(learn_real.training_line(trained, recipe.batch_size))
    lines.append(f"  files: {sizes['keras']} ({sizes['keras_mb']:.2f} MB), {sizes['int8']} "
                 f"({sizes['int8_mb']:.2f} MB)")
    lines += [
        f"baseline_pck_torso@0.2: {baseline['pck_torso@0.2']:.4f}",
        f"baseline_pck_torso@0.1: {baseline['pck_torso@0.1']:.4f}",
        f"baseline_mean_error_px: {baseline['mean_error_px']:.2f}",
        *(f"heldout_pck_torso@0.2_{n}: {_fmt(flipped['pck_torso@0.2_per_keypoint'].get(n))}" for n in names),
        f"heldout_noflip_pck_torso@0.2: {plain['pck_torso@0.2']:.4f}",
        f"heldout_pck_torso@0.1: {flipped['pck_torso@0.1']:.4f}",
        f"heldout_mean_error_px: {flipped['mean_error_px']:.2f}",
        f"train_steps: {trained['steps']}",
        f"heldout_pck_torso@0.2: {flipped['pck_torso@0.2']:.4f}",
        f"int8_pck_torso@0.2: {int8['pck_torso@0.2']:.4f}",
        f"train_seconds: {trained['train_seconds']:.1f}",
    ]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = human_recipe()
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget (wall clock)")
    p.add_argument("--steps", type=int, help="train exactly this many steps instead of --minutes")
    p.add_argument("--out", default="learn_human_out", help="folder for records, logs and models")
    p.add_argument("--data", default=LSPET_DIR, help="the lspet folder (joints.mat, images/)")
    p.add_argument("--input_size", type=learn_real._size, default=d.model.input_size,
                   help="HxW, multiples of 32")
    learn_real.add_recipe_arguments(p, d, epochs=10)
    return p


def recipe_from_args(args):
    """human_recipe() at --input_size, with the other flags' values."""
    return learn_real.with_recipe_args(human_recipe(tuple(args.input_size)), args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prepared = learn_real.prepare_run(args, os.path.join(args.data, "joints.mat"), recipe_from_args)
    if prepared is None:
        return 2
    recipe, out = prepared
    from configs import KeypointSpec, atomic_write_json
    from model.runner import metadata_path

    t0 = time.time()
    try:
        records, info = convert_lspet(args.data, out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = KeypointSpec.from_dict(info, "dataset_info.json")
    train_labels = learn_real.read_split(records, "train", spec.num_keypoints)
    held_out = learn_real.read_split(records, "val", spec.num_keypoints)
    print(f"converted {args.data} in {time.time() - t0:.1f} s: train {info['counts'].get('train')}, "
          f"held-out {info['counts'].get('val')} photos", flush=True)
    baseline = torso_figures(mean_pose_baseline(train_labels, held_out), held_out, spec.names)
    print(f"baseline (mean training pose in the box): PCK@0.2 {baseline['pck_torso@0.2']:.4f}", flush=True)
    recipe = learn_real.for_records(recipe, records, spec.num_keypoints)
    print(f"recipe: {learn_real.describe(recipe)}", flush=True)

    trained = learn_real.train_as_asked(recipe, records, spec, out, args)
    model_path = os.path.join(out, f"{MODEL_NAME}.keras")
    shutil.copyfile(trained["final_model"], model_path)
    shutil.copyfile(metadata_path(trained["final_model"]), metadata_path(model_path))
    int8_path = export_int8(model_path, records, out)
    plain, flipped, int8 = evaluate_files([(model_path, False, "float"), (model_path, True, "float_flip"),
                                           (int8_path, True, "int8_flip")], records, spec, held_out, out)
    sizes = {"keras": model_path, "keras_mb": os.path.getsize(model_path) / 1e6, "int8": int8_path,
             "int8_mb": os.path.getsize(int8_path) / 1e6}
    atomic_write_json(os.path.join(out, "learn_human.json"), {
        "recipe": dataclasses.asdict(recipe), "baseline": baseline, "heldout": flipped,
        "heldout_no_flip_test": plain, "int8": int8, "training": trained, "files": sizes})
    print("\n".join(report_lines(recipe, baseline, plain, flipped, int8, trained, spec.names, sizes)),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
