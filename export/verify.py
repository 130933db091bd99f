"""`python -m export.verify`: what each exported variant cost, next to the float Keras model,
and whether each file is what its card says.

    python -m export.verify --models exported/ --tfrecords records/ [--split val] [--json OUT]

For the source `.keras` model (found through `export_manifest.json`) and every variant listed
there: file size (and its ratio to the float32 TFLite file), PCK and mean keypoint error (image
pixels) on the split's records (`model.evaluation.evaluate_model`, DARK refinement, exactly as
evaluation scores it; torso PCK@0.2 too where the skeleton has a torso), the keypoints' mean
and largest distance from the float Keras model's on the same eval crops (crop pixels), the
largest absolute heatmap difference, and the median single-image CPU latency (TFLite at 1 and
2 interpreter threads; Keras and SavedModel with TensorFlow's default threads; ONNX, if
onnxruntime is installed, with its defaults). All latencies are measured in one pass after the
scoring, the models taking turns (`rounds`), so their ratios come from the same conditions.
Differences use the first `diff_examples` crops (256), which are also the first records the
evaluation scores: each model runs them once (``Remembered``). Every model is scored with the
model card it carries. Models ending in the decoder (`--with_decoder`) are scored through their own
coordinates (mapped back to the image like any prediction), against the float model decoded
the same way ('quarter'); their "max diff" is in crop pixels.

Every TFLite file is also read (`export.quantize`): whether it is integer-only (no float
tensor anywhere), whether `tf.lite.experimental.Analyzer` finds it GPU-delegate compatible,
and what its card claims that it is not (quantization, integer_only, input tensor, raw-pixel
input). A variant with such a problem is marked FAIL and the exit status is 1.

Every frame -> keypoints file listed under `pipelines` (`python -m export --full_pipeline`) is
scored by `export.pipeline_model.agreement` on the same records: each record's whole image
(padded into the file's frame) and its box through the file, against `run.py eval` of its
reference on the record's crop: the crop model of the same quantization in the folder
(float32: the source Keras model; float16 without a float16 crop model: the source too).
Reported: the largest, median and 99th-percentile distance (frame pixels), how many
keypoints are more than 0.5 px off, and AP (COCO OKS, where the keypoints have sigmas) and
PCK of both. A pipeline with more than 1% of its keypoints over 0.5 px is marked FAIL and the
exit status is 1; a quantized pipeline without a crop model of its quantization is compared
with the float model and not judged (said in its row). Prints the tables and writes the rows
as json (default `<models>/verify.json`; pipelines under `pipelines`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from configs import atomic_write_json
from export.convert import DECODER_REFINE, MANIFEST_NAME, file_size
from export.records import RecordsError, load_crops

EVAL_REFINE = "dark"
METRICS = ("pck", "pck_torso@0.2", "mean_error_px")   # of evaluate_model, kept per row


class VerifyError(ValueError):
    """The export folder or records cannot be verified."""


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """Which records to score on and how long to time."""

    split: str = "val"
    max_examples: Optional[int] = None   # PCK on the first N records; None: every record
    diff_examples: Optional[int] = 256   # crops for heatmap differences and decoder models
    latency_runs: int = 30               # timed single-image runs (median), after 3 warm-ups
    threads: tuple[int, ...] = (1, 2)    # TFLite interpreter threads to time
    rounds: int = 5                      # latency_runs split into turns taken by all models


def load_manifest(models_dir: str) -> dict:
    path = os.path.join(models_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise VerifyError(f"{path} not found: --models must be a folder written by "
                          f"`python -m export` (it records the source model and the variants)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    source = manifest.get("source_model", "")
    if not os.path.isfile(source):
        raise VerifyError(f"{path}: its source model {source!r} no longer exists; the float "
                          f"Keras model is the reference, so re-export or restore it")
    return manifest


def interleaved_latency_ms(timers: dict, runs: int, rounds: int, warmup: int = 3,
                           clock: Callable[[], float] = time.perf_counter) -> dict:
    """Median time (ms, by ``clock``: wall time by default) of each ``timers[key]()``: every
    timer warmed up, then ``rounds`` turns in which each timer runs ``runs / rounds`` times, so
    that load changes on a shared machine hit every model alike."""
    for fn in timers.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in timers}
    per_turn = max(1, -(-runs // max(1, rounds)))
    for _ in range(max(1, rounds)):
        for key, fn in timers.items():
            for _ in range(per_turn):
                started = clock()
                fn()
                times[key].append(clock() - started)
    return {key: float(np.median(t) * 1e3) for key, t in times.items()}


def keypoint_distance(coords: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(mean, max) distance in crop pixels between two predictions [N, K, 2], over the
    labelled keypoints (weight > 0)."""
    dist = np.linalg.norm(coords - reference, axis=-1)[weights > 0]
    return (float(dist.mean()), float(dist.max())) if dist.size else (0.0, 0.0)


def batched(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + batch])) for i in range(0, len(images), batch)])


class Remembered:
    """``runner`` that runs each of ``crops`` once: its outputs for them (heatmaps, or
    keypoints and confidence) are kept and given back when the same crop comes again. The
    difference crops are the first records of the split that the evaluation then scores."""

    def __init__(self, runner, crops: np.ndarray):
        self.runner = runner
        self._kept = {_digest(crop): {} for crop in crops}

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._outputs(images, "heatmaps", lambda x: (self.runner(x),))[0]

    def keypoints(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._outputs(images, "keypoints", self.runner.keypoints)

    def _outputs(self, images, kind: str, run) -> tuple[np.ndarray, ...]:
        images = np.asarray(images, np.uint8)
        if not len(images):
            return tuple(np.asarray(v) for v in run(images))
        keys = [_digest(image) for image in images]
        missing = [i for i, key in enumerate(keys) if kind not in self._kept.get(key, {})]
        fresh = [np.asarray(v) for v in run(images[missing])] if missing else []
        for j, i in enumerate(missing):
            if keys[i] in self._kept:
                self._kept[keys[i]][kind] = tuple(v[j] for v in fresh)
        position = {i: j for j, i in enumerate(missing)}
        each = [tuple(v[position[i]] for v in fresh) if i in position else self._kept[key][kind]
                for i, key in enumerate(keys)]
        return tuple(np.stack(parts) for parts in zip(*each))


def _digest(image: np.ndarray) -> bytes:
    import hashlib
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def _kept(metrics: dict) -> dict:
    """The figures of an evaluate_model result that a row keeps (``METRICS``)."""
    return {k: metrics[k] for k in METRICS if metrics.get(k) is not None}


def onnxruntime_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("onnxruntime") is not None


def verify_exports(models_dir: str, tfrecords: str, config: VerifyConfig = VerifyConfig(),
                   log: Callable[[str], None] = print) -> dict:
    """Rows for the source model and every variant of `models_dir` (see the module docstring).
    Every model is scored by ``model.evaluation.evaluate_model`` with the card it carries."""
    from model.evaluation import Scoring, evaluate_models
    from model.metrics import pck_threshold_px
    from model.runner import KerasRunner

    manifest = load_manifest(models_dir)
    source = manifest["source_model"]
    reference = KerasRunner(source)
    card = reference.card
    if card is None:
        raise VerifyError(f"the source model {source} carries no model card (none inside it, no "
                          f"json beside it); the keypoint definition and crop come from there")
    limits = [n for n in (config.max_examples, config.diff_examples) if n is not None]
    crops = load_crops(tfrecords, config.split, card.keypoints, card.input_size,
                       card.output_stride, card.crop_mode, card.padding,
                       min(limits) if limits else None)
    threshold = pck_threshold_px(card.input_size, card.output_stride)
    scored_reference = Remembered(reference, crops.images)
    ref_heatmaps = batched(scored_reference, crops.images)
    codec = card.codec()
    ref_coords = {refine: np.asarray(codec.decode(ref_heatmaps, refine=refine)[0])
                  for refine in (EVAL_REFINE, DECODER_REFINE)}
    one = crops.images[:1]

    # evaluate_model stops after the batch that reaches max_examples: a divisor as batch size
    # makes it score exactly max_examples records
    batch = max(d for d in range(1, 17) if not config.max_examples or config.max_examples % d == 0)

    opened, skipped = [], []
    for variant in manifest["variants"]:
        path = os.path.join(models_dir, variant["path"])
        if not os.path.exists(path):
            raise VerifyError(f"{path} is listed in {MANIFEST_NAME} but missing; re-run the export")
        if variant["format"] == "onnx" and not onnxruntime_available():
            skipped.append({"name": variant["name"], "reason": "onnxruntime is not installed"})
            log(f"{variant['name']}: skipped (onnxruntime is not installed)")
            continue
        runner, variant_timers = open_variant(path, variant, config.threads)
        opened.append((variant, path, Remembered(runner, crops.images), variant_timers))
    # every model scored in one pass over the records (the same batches each would see alone)
    floats = [Scoring(scored_reference, refine=EVAL_REFINE)]
    if any(runner.decodes for _, _, runner, _ in opened):   # the float model decoded as the decoder does
        floats.append(Scoring(scored_reference, refine=DECODER_REFINE))
    scored = evaluate_models(floats + [Scoring(runner, refine=EVAL_REFINE) for _, _, runner, _ in opened],
                             tfrecords, config.split, batch_size=batch, max_examples=config.max_examples)
    float_metrics = _kept(scored[0])
    float_quarter = scored[1]["pck"] if len(floats) == 2 else None
    rows = [dict(name=os.path.basename(source), format="keras", quantization="float32",
                 decoder=False, size_bytes=file_size(source), **float_metrics,
                 float_pck=float_metrics["pck"], px_vs_float=0.0, px_vs_float_max=0.0,
                 max_abs_diff=0.0, diff_unit="heatmap")]
    timers = {(0, "tf"): lambda: reference(one)}
    log(f"{rows[0]['name']}: PCK {float_metrics['pck']:.4f}")
    for (variant, path, runner, variant_timers), metrics in zip(opened, scored[len(floats):]):
        row = {k: variant[k] for k in ("name", "format", "quantization", "decoder")}
        row["size_bytes"] = file_size(path)
        if runner.decodes:
            coords = batched(lambda x, r=runner: r.keypoints(x)[0], crops.images)
            row.update(_kept(metrics), float_pck=float_quarter,
                       max_abs_diff=float(np.abs(coords - ref_coords[DECODER_REFINE]).max()),
                       diff_unit="crop px", refine=DECODER_REFINE)
            reference_coords = ref_coords[DECODER_REFINE]
            time_one = "keypoints"
        else:
            heatmaps = batched(runner, crops.images)
            row.update(_kept(metrics), float_pck=float_metrics["pck"],
                       max_abs_diff=float(np.abs(heatmaps - ref_heatmaps).max()),
                       diff_unit="heatmap", refine=EVAL_REFINE)
            coords = np.asarray(codec.decode(heatmaps, refine=EVAL_REFINE)[0])
            reference_coords = ref_coords[EVAL_REFINE]
            time_one = "__call__"
        row["px_vs_float"], row["px_vs_float_max"] = keypoint_distance(coords, reference_coords,
                                                                       crops.weights)
        if variant["format"] == "tflite":
            row.update(inspect_tflite(path, runner.card))
        index = len(rows)
        for key, r in variant_timers.items():
            timers[(index, key)] = lambda r=r, m=time_one: getattr(r, m)(one)
        rows.append(row)
        status = f"; FAIL: {'; '.join(row['problems'])}" if row.get("problems") else ""
        log(f"{row['name']}: PCK {row['pck']:.4f} (float {row['float_pck']:.4f}), keypoints "
            f"{row['px_vs_float']:.2f} px from float, max diff {row['max_abs_diff']:.4f} "
            f"{row['diff_unit']}{status}")
    log(f"timing {len(timers)} model/thread settings, {config.latency_runs} runs each in "
        f"{config.rounds} turns")
    latencies = interleaved_latency_ms(timers, config.latency_runs, config.rounds)
    for row in rows:
        row["latency_ms"] = {}
    for (index, key), value in latencies.items():
        rows[index]["latency_ms"][key] = value
    add_ratios(rows)
    open_runners = {os.path.abspath(path): runner.runner for _, path, runner, _ in opened}
    open_runners[os.path.abspath(source)] = reference
    pipelines = verify_pipelines(models_dir, manifest, tfrecords, config, log, open_runners)
    return {"models": os.path.abspath(models_dir), "tfrecords": os.path.abspath(tfrecords),
            "split": config.split, "examples": int(scored[0]["examples"]),
            "diff_examples": int(len(crops.images)), "pck_threshold_px": threshold, "rows": rows,
            "pipelines": pipelines, "skipped": skipped,
            "failed": [r["name"] for r in rows + pipelines if r.get("problems")]}


# what a pipeline file's network is compared with when the folder has no crop model of its
# quantization: float16 weights are the float network to ~1e-3, the others are not
FLOAT_REFERENCE_JUDGED = ("float32", "float16")


def pipeline_reference(models_dir: str, manifest: dict, entry: dict) -> tuple[str, bool]:
    """(model whose run.py eval a pipeline file is held to, whether the 0.5 px bar applies):
    float32 pipelines, the source model; others, the crop model of their quantization in the
    folder (TFLite, no decoder), else the source model (judged for float16 only)."""
    quantization = entry["quantization"]
    if quantization != "float32":
        for variant in manifest.get("variants", []):
            if (variant["format"] == "tflite" and variant["quantization"] == quantization
                    and not variant["decoder"]):
                path = os.path.join(models_dir, variant["path"])
                if os.path.exists(path):
                    return path, True
    return manifest["source_model"], quantization in FLOAT_REFERENCE_JUDGED


def verify_pipelines(models_dir: str, manifest: dict, tfrecords: str,
                     config: VerifyConfig = VerifyConfig(), log: Callable[[str], None] = print,
                     runners: Optional[dict] = None) -> list[dict]:
    """One row per file under the manifest's ``pipelines``: its agreement with run.py eval of
    its reference (``pipeline_reference``) on the split's records (the module docstring), and
    ``problems`` when it misses half a pixel on more than 1% of the keypoints. ``runners``:
    runners already open, by absolute model path (the reference is not loaded again)."""
    from export.convert import ExportError
    from export.pipeline_model import agreement, agreement_problem
    from model.runner import ModelFileError

    rows = []
    for entry in manifest.get("pipelines", []):
        path = os.path.join(models_dir, entry["path"])
        if not os.path.exists(path):
            raise VerifyError(f"{path} is listed in {MANIFEST_NAME} but missing; re-run the export "
                              f"with --full_pipeline")
        reference, judged = pipeline_reference(models_dir, manifest, entry)
        try:
            result = agreement(path, reference, tfrecords, config.split, config.max_examples,
                               (runners or {}).get(os.path.abspath(reference)))
        except (ExportError, ModelFileError) as e:
            raise VerifyError(f"{path}: {e}") from e
        row = {"name": entry["name"], "format": "tflite", "quantization": entry["quantization"],
               "pipeline": True, "size_bytes": file_size(path),
               "reference_name": os.path.basename(reference), "judged": judged,
               **{k: v for k, v in result.items() if k not in ("pipeline",)}}
        problem = agreement_problem(result) if judged else None
        row["problems"] = [problem] if problem else []
        if not judged:
            row["note"] = (f"no {entry['quantization']} crop model in {models_dir} to compare with "
                           f"(export one with python -m export --quantize "
                           f"{entry['quantization']} "
                           f"and the same --representative): compared with the float model, not judged")
        rows.append(row)
        score = (f"AP {result['ap_pipeline']:.4f} (eval {result['ap_reference']:.4f})"
                 if "ap_pipeline" in result else
                 f"PCK {result['pck_pipeline']:.4f} (eval {result['pck_reference']:.4f})")
        status = (f"; FAIL: {problem}" if problem else
                  f"; NOT JUDGED: {row['note']}" if not judged else "")
        log(f"{row['name']}: vs run.py eval of {row['reference_name']} on {result['examples']} "
            f"records: max {result['max_px']:.4f} px, median {result['median_px']:.5f}, p99 "
            f"{result['p99_px']:.4f}, {result['over_half_px']} of {result['keypoints']} over "
            f"0.5 px, {score}{status}")
    return rows


def format_pipeline_table(report: dict) -> str:
    """The pipelines' agreement with run.py eval as one table ('' when there are none)."""
    rows = report.get("pipelines") or []
    if not rows:
        return ""
    header = ["pipeline", "network", "frame", "vs run.py eval of", "records", "max px",
              "median px", "p99 px", "> 0.5 px", "AP / eval", "PCK / eval", "result"]
    lines = []
    for r in rows:
        ap = (f"{r['ap_pipeline']:.4f} / {r['ap_reference']:.4f}" if "ap_pipeline" in r else "-")
        pck = (f"{r['pck_pipeline']:.4f} / {r['pck_reference']:.4f}"
               if r.get("pck_pipeline") is not None else "-")
        lines.append([r["name"], r["quantization"], "x".join(str(v) for v in r["frame_size"]),
                      r["reference_name"], str(r["examples"]), f"{r['max_px']:.4f}",
                      f"{r['median_px']:.5f}", f"{r['p99_px']:.4f}",
                      f"{r['over_half_px']}/{r['keypoints']}", ap, pck,
                      "FAIL" if r["problems"] else ("ok" if r["judged"] else "not judged")])
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 4 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = ("frame -> keypoints pipelines: each record's image (padded into the frame) and box "
             "through the file against run.py eval of the reference on the record's crop, keypoint "
             "distances in frame pixels; FAIL when more than 1% are over 0.5 px")
    notes = [f"FAIL {r['name']}: {p}" for r in rows for p in r["problems"]]
    notes += [f"NOT JUDGED {r['name']}: {r['note']}" for r in rows if r.get("note")]
    notes += [f"{r['name']}: {r['skipped_frames']} image(s) larger than its frame, not compared"
              for r in rows if r.get("skipped_frames")]
    return "\n".join([title, fmt.format(*header)] + [fmt.format(*row) for row in lines] + notes)


def inspect_tflite(path: str, card) -> dict:
    """integer_only, the GPU-delegate check and the card's false claims of one TFLite file."""
    from export.quantize import claim_problems, gpu_compatibility, tflite_facts
    with open(path, "rb") as f:
        data = f.read()
    facts = tflite_facts(data)
    gpu = gpu_compatibility(data)
    problems = claim_problems(card, facts) if card is not None else ["carries no model card"]
    return {"integer_only": facts["integer_only"], "float_tensors": facts["float_tensors"],
            "activation_types": sorted(t.lower() for t in facts["activation_types"]),
            "input": facts["input"], "ops": facts["ops"], "gpu_compatible": gpu["compatible"],
            "gpu_warnings": gpu["warnings"], "problems": problems}


def open_variant(path: str, variant: dict, threads: tuple[int, ...]):
    """(runner for scoring, {latency key: runner to time}) of one exported variant."""
    from model.runner import load_runner
    runner = load_runner(path)
    if variant["format"] == "tflite":
        return runner, {f"{n}t": load_runner(path, num_threads=n) for n in threads}
    return runner, {"ort" if variant["format"] == "onnx" else "tf": runner}


def add_ratios(rows: list[dict]) -> None:
    """size_ratio: file size / the float32 TFLite file (heatmap model, else decoder model);
    latency_ratio: per thread count, latency / the float32 TFLite model's."""
    for decoder in (False, True):
        base = next((r for r in rows if r["format"] == "tflite" and r["quantization"] == "float32"
                     and r["decoder"] == decoder), None)
        if base is None:
            continue
        for r in rows:
            if r["decoder"] == decoder and r["format"] == "tflite":
                r["size_ratio"] = r["size_bytes"] / base["size_bytes"]
                r["latency_ratio"] = {k: v / base["latency_ms"][k] for k, v in r["latency_ms"].items()
                                      if k in base["latency_ms"]}


def format_table(report: dict) -> str:
    threads = sorted({k for r in report["rows"] for k in r["latency_ms"]})
    torso = any("pck_torso@0.2" in r for r in report["rows"])
    header = (["model", "format", "quant", "size MB", "x f32", "PCK", "float PCK", "dPCK"]
              + (["torso@0.2"] if torso else [])
              + ["err px", "px vs f32", "max |diff|"] + [f"ms {k}" for k in threads]
              + [f"x f32 {k}" for k in threads if k.endswith("t")] + ["int-only", "GPU", "card"])
    lines = []
    for r in report["rows"]:
        ratio = r.get("size_ratio")
        diff = f"{r['max_abs_diff']:.4f}" + (" px" if r["diff_unit"] == "crop px" else "")
        tflite = r["format"] == "tflite"
        lines.append(
            [r["name"], r["format"], r["quantization"] + ("+dec" if r["decoder"] else ""),
             f"{r['size_bytes'] / 1e6:.3f}", f"{ratio:.3f}" if ratio is not None else "-",
             f"{r['pck']:.4f}", f"{r['float_pck']:.4f}", f"{r['pck'] - r['float_pck']:+.4f}"]
            + ([f"{r['pck_torso@0.2']:.4f}" if "pck_torso@0.2" in r else "-"] if torso else [])
            + [f"{r['mean_error_px']:.2f}" if "mean_error_px" in r else "-",
               f"{r['px_vs_float']:.2f}", diff]
            + [f"{r['latency_ms'][k]:.2f}" if k in r["latency_ms"] else "-" for k in threads]
            + [f"{r['latency_ratio'][k]:.2f}" if k in r.get("latency_ratio", {}) else "-"
               for k in threads if k.endswith("t")]
            + ([("yes" if r["integer_only"] else "no"), ("ok" if r["gpu_compatible"] else "no"),
                ("FAIL" if r["problems"] else "ok")] if tflite else ["-", "-", "-"]))
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = (f"{report['split']} split of {report['tfrecords']}: PCK on {report['examples']} "
             f"examples (threshold {report['pck_threshold_px']:.2f} crop px; err px: mean keypoint "
             f"error in image pixels); differences from the float model ('px vs f32': mean keypoint "
             f"distance, crop px) and decoder models (+dec) on the first {report['diff_examples']}; "
             f"latency = median single image, all models timed in turns (t = TFLite interpreter "
             f"threads, tf = TensorFlow default threads, ort = onnxruntime default threads); "
             f"int-only: no float tensor in the file; GPU: tf.lite.experimental.Analyzer's "
             f"GPU-delegate check; card: the file is what its card says")
    failures = [f"FAIL {r['name']}: {p}" for r in report["rows"] for p in r.get("problems", [])]
    return "\n".join([title, fmt.format(*header)] + [fmt.format(*row) for row in lines] + failures)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", "--models_dir", dest="models", required=True,
                   help="output folder of `python -m export`")
    p.add_argument("--tfrecords", required=True, help="TFRecords folder (convert_to_tfrecord.py)")
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="report path (default <models>/verify.json)")
    p.add_argument("--max_examples", type=int, default=None, help="score the first N records only")
    p.add_argument("--diff_examples", type=int, default=VerifyConfig.diff_examples,
                   help="crops for heatmap differences and decoder models (default 256)")
    p.add_argument("--latency_runs", type=int, default=VerifyConfig.latency_runs)
    p.add_argument("--rounds", type=int, default=VerifyConfig.rounds,
                   help="turns the models take at timing (default 5)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = VerifyConfig(split=args.split, max_examples=args.max_examples,
                          diff_examples=args.diff_examples, latency_runs=args.latency_runs,
                          rounds=args.rounds)
    try:
        report = verify_exports(args.models, args.tfrecords, config)
    except (FileNotFoundError, VerifyError, RecordsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    pipelines = format_pipeline_table(report)
    if pipelines:
        print(pipelines)
    out = args.json or os.path.join(args.models, "verify.json")
    atomic_write_json(out, report)
    print(f"report: {out}")
    cards = [r["name"] for r in report["rows"] if r.get("problems")]
    missed = [r["name"] for r in report["pipelines"] if r.get("problems")]
    if cards:
        print(f"error: {len(cards)} file(s) are not what their model card says: "
              f"{', '.join(cards)}; re-export them with python -m export", file=sys.stderr)
    if missed:
        print(f"error: {len(missed)} pipeline file(s) miss run.py eval by more than 0.5 px on over "
              f"1% of the keypoints: {', '.join(missed)}; re-export them with python -m export "
              f"--full_pipeline (and their reference crop models with the same --representative)",
              file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
