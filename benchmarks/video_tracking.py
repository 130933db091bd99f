"""Video with ground truth: the whole-frame demo, tracking, and tracking + smoothing.

    .venv/bin/python -m benchmarks.video_tracking [--model_path M] [--out DIR] [--frames 300]
        [--size 480x640] [--seed 0] [--min_cutoff 1.0] [--beta 4.0] [--smoke]

What it does, in order:

1. The model: ``--model_path``; else ``quickstart_out/logs/final.keras`` when ``make
   quickstart`` was run; else OUT/quickstart/logs/final.keras, trained there first with the
   Makefile's quickstart recipe (``benchmarks.quickstart_recipe``, ~5 min on 2 cores; a
   later run reuses it). The quickstart model is trained on box crops of the synthetic set.
2. The clip: ``pipeline.synthetic.render_clip`` (a figure walking round a 480x640 scene,
   turning, nearer and farther, behind a pillar now and then; noise anew every frame),
   written as OUT/clip.mp4 at 25 fps (mp4v: the model sees compressed frames, as a user's).
3. Two runs of the demo (``model.predict.run_demo``, what ``run.py predict`` calls): the
   whole frame letterboxed (OUT/whole_frame.mp4), and ``--track --smooth --draw_box --csv``
   (OUT/tracked.mp4, OUT/tracked.csv). Smoothing never changes the boxes the tracker reads,
   so the tracked run's raw keypoints ("raw_keypoints") are the tracking-only figures.
4. Scores against the clip's ground truth, over the labelled keypoints (visibility > 0,
   those behind the pillar included): mean and median error in frame pixels; the share of
   frames where the subject is lost (fewer than half of its labelled keypoints within
   ``LOST_RADIUS`` x the longer side of its box); jitter, the mean absolute second
   difference |p[t+1] - 2 p[t] + p[t-1]| of each keypoint's track (px) over the triples
   labelled in all three frames, beside the ground truth's own.

Prints a table, greppable ``key: value`` lines and the goals (tracking at most half the
whole-frame error with the subject under a quarter of the frame; smoothing at least halves
jitter and raises the error by at most 5%); everything also goes to OUT/video_tracking.json.
The last line reads ``tracking/whole-frame error: A; smoothed/raw jitter: B; smoothed/raw
error: C``. ``--smoke``: a 240x320 clip of 30 frames (seconds; format and sanity, not the
goals).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import TYPE_CHECKING, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from pipeline.synthetic import ClipTruth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_QUICKSTART_MODEL = os.path.join(REPO, "quickstart_out", "logs", "final.keras")
FPS = 25.0
LOST_RADIUS = 0.2            # a keypoint is found within this x the subject box's longer side
GOAL_ERROR_RATIO = 0.5       # tracking / whole-frame error, subject under a quarter of the frame
GOAL_JITTER_RATIO = 0.5      # smoothed / raw jitter
GOAL_SMOOTHED_ERROR = 1.05   # smoothed / raw error
SMOKE = {"image_size": (240, 320), "num_frames": 30}


def jitter(tracks: np.ndarray, labelled: np.ndarray) -> float:
    """Mean |p[t+1] - 2 p[t] + p[t-1]| (px) over keypoints labelled in all three frames."""
    triples = labelled[:-2] & labelled[1:-1] & labelled[2:]
    second = np.linalg.norm(tracks[2:] - 2.0 * tracks[1:-1] + tracks[:-2], axis=-1)
    return float(second[triples].mean()) if triples.any() else float("nan")


def score(pred: np.ndarray, truth: "ClipTruth") -> dict:
    """Error (mean, median, px), lost share and jitter of keypoint tracks [N, K, 2]."""
    labelled = truth.visibility > 0
    errors = np.linalg.norm(pred - truth.keypoints, axis=-1)
    present = labelled.any(1)
    radius = LOST_RADIUS * truth.boxes[:, 2:].max(1)
    found = (errors <= radius[:, None]) & labelled
    lost = present & (found.sum(1) * 2 < labelled.sum(1))
    return {"error_px": float(errors[labelled].mean()), "median_error_px": float(np.median(errors[labelled])),
            "lost_share": float(lost.sum() / max(1, present.sum())), "jitter_px": jitter(pred, labelled)}


def resolve_model(model_path: Optional[str], out: str) -> tuple[str, str]:
    """(model path, where it came from): --model_path, make quickstart's, or trained in OUT."""
    if model_path:
        return model_path, "--model_path"
    if os.path.isfile(MAKE_QUICKSTART_MODEL):
        return MAKE_QUICKSTART_MODEL, "make quickstart"
    trained = os.path.join(out, "quickstart", "logs", "final.keras")
    if os.path.isfile(trained):
        return trained, "trained by an earlier run of this benchmark"
    from benchmarks.quickstart_recipe import train_quickstart
    print(f"no model given and no quickstart model found: training the quickstart recipe into "
          f"{os.path.join(out, 'quickstart')} (~5 min on 2 cores)", flush=True)
    return train_quickstart(os.path.join(out, "quickstart")), "trained now (quickstart recipe)"


def _tracks(predictions: list, key: str) -> np.ndarray:
    return np.asarray([p[key] for p in predictions], np.float64)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def report_lines(results: dict) -> list[str]:
    """The table, the key: value lines, the goals and the closing line of ratios."""
    rows = results["methods"]
    clip, counts = results["clip"], results["tracking_counts"]
    lines = [f"clip: {clip['frames']} frames of {clip['image_size'][0]}x{clip['image_size'][1]} (HxW) at "
             f"{FPS:g} fps, seed {clip['seed']}; subject box {clip['area_share_mean']:.1%} of the "
             f"frame on average (max {clip['area_share_max']:.1%}); {clip['occluded_frames']} "
             f"frame(s) with keypoints behind the pillar",
             f"model: {results['model']} ({results['model_source']})",
             f"tracker: {counts['tracked']} tracked, {counts['search']} searched, {counts['lost']} "
             f"lost, {counts['reinitialized']} re-initialization(s), {counts['widened']} unsure "
             f"frame(s) read wider; One-Euro min_cutoff "
             f"{results['smoothing']['min_cutoff']} Hz, beta {results['smoothing']['beta']}",
             "",
             f"{'method':<22}{'error px':>10}{'median px':>11}{'lost':>8}{'jitter px':>11}{'fps':>7}"]
    for name, label in (("whole_frame", "whole frame"), ("tracking", "tracking"),
                        ("smoothed", "tracking + smoothing")):
        r = rows[name]
        lines.append(f"{label:<22}{r['error_px']:>10.2f}{r['median_error_px']:>11.2f}"
                     f"{r['lost_share']:>8.1%}{r['jitter_px']:>11.2f}{r['fps']:>7.1f}")
    lines.append(f"{'ground truth':<22}{'':>10}{'':>11}{'':>8}{results['truth_jitter_px']:>11.2f}")
    lines.append("")
    for name in ("whole_frame", "tracking", "smoothed"):
        for key in ("error_px", "median_error_px", "lost_share", "jitter_px"):
            lines.append(f"{name}_{key}: {rows[name][key]:.4f}")
    lines.append(f"truth_jitter_px: {results['truth_jitter_px']:.4f}")
    lines.append(f"subject_area_share_max: {clip['area_share_max']:.4f}")
    g = results["goals"]
    verdict = {True: "met", False: "NOT met"}
    note = " (smoke run: not a measurement)" if results["smoke"] else ""
    lines.append(f"goal tracking <= {GOAL_ERROR_RATIO:g} x whole-frame error (subject under a quarter "
                 f"of the frame): {verdict[g['tracking_error']]}{note}")
    lines.append(f"goal smoothed jitter <= {GOAL_JITTER_RATIO:g} x raw: "
                 f"{verdict[g['smoothed_jitter']]}{note}")
    lines.append(f"goal smoothed error <= {GOAL_SMOOTHED_ERROR:g} x raw: "
                 f"{verdict[g['smoothed_error']]}{note}")
    r = results["ratios"]
    lines.append(f"tracking/whole-frame error: {r['tracking_whole_error']:.3f}; smoothed/raw jitter: "
                 f"{r['smoothed_raw_jitter']:.3f}; smoothed/raw error: {r['smoothed_raw_error']:.3f}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    from model.tracking import DEFAULT_BETA, DEFAULT_MIN_CUTOFF
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_path", help="a .keras / SavedModel / .tflite model (default: the "
                   "quickstart's, trained here if none is found)")
    p.add_argument("--out", default="video_tracking_out", help="folder for the clip, videos, CSV, json")
    p.add_argument("--frames", type=int, help="clip length (default 300; --smoke 30)")
    p.add_argument("--size", help="HxW of the clip's frames (default 480x640; --smoke 240x320)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_cutoff", type=float, default=DEFAULT_MIN_CUTOFF, help="One-Euro, Hz")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help="One-Euro speed coefficient")
    p.add_argument("--smoke", action="store_true", help="a small clip, for a test (seconds)")
    return p


def _clip_config(args):
    from pipeline.synthetic import ClipConfig
    default = ClipConfig()
    frames = args.frames or (SMOKE["num_frames"] if args.smoke else default.num_frames)
    size = SMOKE["image_size"] if args.smoke else default.image_size
    if args.size:
        try:
            size = tuple(int(v) for v in args.size.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"--size {args.size}: expected HxW of at least 32x32, e.g. 480x640")
    if frames < 3:
        raise ValueError(f"--frames {frames}: jitter needs at least 3 frames")
    # the same walking speed at any length: one lap per default clip length
    return dataclasses.replace(default, image_size=size, num_frames=frames,
                               laps=default.laps * frames / default.num_frames)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from configs import atomic_write_json
    from model.predict import PipelinePredictor, pipeline_runner, run_demo
    from model.predictor import Predictor
    from model.runner import load_runner
    from model.tracking import OneEuroSettings
    try:
        config = _clip_config(args)
        smoothing = OneEuroSettings(args.min_cutoff, args.beta)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    model_path, source = resolve_model(args.model_path, out)
    try:
        pipeline = pipeline_runner(model_path)
        runner = pipeline or load_runner(model_path)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if runner.card is None:
        print(f"error: {model_path} carries no model card (keypoints, crop); pass a model written "
              f"by run.py train or python -m export", file=sys.stderr)
        return 2
    predictor = (PipelinePredictor(pipeline, pipeline.card.keypoints) if pipeline is not None
                 else Predictor(runner, runner.card))

    t0 = time.time()
    clip = os.path.join(out, "clip.mp4")
    from pipeline.synthetic import write_clip
    truth = write_clip(clip, config, args.seed, fps=FPS)
    print(f"rendered {clip} ({config.num_frames} frames) in {time.time() - t0:.1f} s", flush=True)

    whole = run_demo(predictor, clip, os.path.join(out, "whole_frame.mp4"))
    tracked = run_demo(predictor, clip, os.path.join(out, "tracked.mp4"), track=True,
                       smooth=smoothing, csv=os.path.join(out, "tracked.csv"), draw_box=True)
    for run in (whole, tracked):
        if run["frames"] != config.num_frames:
            print(f"error: read {run['frames']} of the {config.num_frames} frames of {clip} back",
                  file=sys.stderr)
            return 1
    methods = {"whole_frame": score(_tracks(whole["predictions"], "keypoints"), truth),
               "tracking": score(_tracks(tracked["predictions"], "raw_keypoints"), truth),
               "smoothed": score(_tracks(tracked["predictions"], "keypoints"), truth)}
    methods["whole_frame"]["fps"] = whole["fps"]
    methods["tracking"]["fps"] = methods["smoothed"]["fps"] = tracked["fps"]
    frame_area = float(truth.image_size[0] * truth.image_size[1])
    areas = truth.boxes[:, 2] * truth.boxes[:, 3] / frame_area
    ratios = {"tracking_whole_error": _ratio(methods["tracking"]["error_px"],
                                             methods["whole_frame"]["error_px"]),
              "smoothed_raw_jitter": _ratio(methods["smoothed"]["jitter_px"],
                                            methods["tracking"]["jitter_px"]),
              "smoothed_raw_error": _ratio(methods["smoothed"]["error_px"],
                                           methods["tracking"]["error_px"])}
    small = bool(areas.max() < 0.25)
    results = {
        "model": model_path, "model_source": source, "smoke": args.smoke,
        "clip": {"path": clip, "frames": config.num_frames, "image_size": list(config.image_size),
                 "seed": args.seed, "config": dataclasses.asdict(config),
                 "area_share_mean": float(areas.mean()), "area_share_max": float(areas.max()),
                 "occluded_frames": int((truth.visibility == 1).any(1).sum())},
        "smoothing": dataclasses.asdict(smoothing), "tracking_counts": tracked["tracking"],
        "methods": methods, "truth_jitter_px": jitter(truth.keypoints, truth.visibility > 0),
        "ratios": ratios,
        "goals": {"tracking_error": small and ratios["tracking_whole_error"] <= GOAL_ERROR_RATIO,
                  "smoothed_jitter": bool(ratios["smoothed_raw_jitter"] <= GOAL_JITTER_RATIO),
                  "smoothed_error": bool(ratios["smoothed_raw_error"] <= GOAL_SMOOTHED_ERROR)},
        "outputs": whole["outputs"] + tracked["outputs"]}
    atomic_write_json(os.path.join(out, "video_tracking.json"), results)
    print("\n".join(report_lines(results)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
