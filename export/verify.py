"""`python -m export.verify`: what each exported variant cost, next to the float Keras model.

    python -m export.verify --models exported/ --tfrecords records/ [--split val] [--json OUT]

For the source `.keras` model (found through `export_manifest.json`) and every variant listed
there: file size (and its ratio to the float32 TFLite file), PCK on the split's records
(`model.evaluation.evaluate_model`, DARK refinement, exactly as evaluation scores it), the
largest absolute heatmap difference from the Keras model on the same eval crops, and the
median single-image CPU latency (TFLite at 1 and 2 interpreter threads; Keras and SavedModel
with TensorFlow's default threads; ONNX, if onnxruntime is installed, with its defaults).
Heatmap differences use the first `diff_examples` crops (256). Models ending in the decoder
(`--with_decoder`) are scored on those crops by their own coordinates, against the float model
decoded the same way ('quarter'); their "max diff" is in crop pixels. Prints one table and
writes the rows as json (default `<models>/verify.json`).
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

from configs import KeypointSpec, atomic_write_json
from export.convert import DECODER_REFINE, MANIFEST_NAME, file_size
from export.records import Crops, RecordsError, load_crops

EVAL_REFINE = "dark"


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


def median_latency_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    """Median wall time of `fn()` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def batched(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + batch])) for i in range(0, len(images), batch)])


class DecoderRunner:
    """A `*_decoder.tflite` model: uint8 crops [B, H, W, 3] -> (keypoints [B, K, 2] crop px,
    confidence [B, K]), one image per invoke (batch-1 model)."""

    def __init__(self, path: str, num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        outs = {len(o["shape"]): o for o in self.interpreter.get_output_details()}
        if set(outs) != {2, 3}:
            raise VerifyError(f"{path}: expected keypoints [1, K, 2] and confidence [1, K] outputs")
        self._coords, self._conf = outs[3], outs[2]

    def __call__(self, images: np.ndarray):
        coords, conf = [], []
        for image in np.asarray(images, np.uint8):
            self.interpreter.set_tensor(self._in["index"], image[None].astype(self._in["dtype"]))
            self.interpreter.invoke()
            coords.append(self.interpreter.get_tensor(self._coords["index"])[0])
            conf.append(self.interpreter.get_tensor(self._conf["index"])[0])
        return np.stack(coords).astype(np.float32), np.stack(conf).astype(np.float32)


class OnnxRunner:
    """An ONNX export through onnxruntime (optional): uint8 crops -> heatmaps (the
    `model.runner` interface, for evaluate_model), or with the decoder (keypoints, confidence)."""

    kind = "onnx"

    def __init__(self, path: str, metadata: dict):
        import onnxruntime
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.metadata = metadata
        self.input_size = tuple(metadata["input_size"])
        self.stride = int(metadata["output_stride"])
        self.num_keypoints = int(metadata["num_keypoints"])
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray):
        out = dict(zip(self._outputs, self.session.run(None, {self._input: np.asarray(images, np.uint8)})))
        if "heatmaps" in out:
            return out["heatmaps"].astype(np.float32)
        return out["keypoints"].astype(np.float32), out["confidence"].astype(np.float32)


def onnxruntime_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("onnxruntime") is not None


def crop_pck(coords: np.ndarray, crops: Crops, threshold_px: float) -> float:
    """PCK from crop-pixel coordinates (the metric of model.metrics, without the inverse affine)."""
    valid = crops.weights > 0
    dist = np.linalg.norm(coords - crops.keypoints, axis=-1)
    return float(((dist < threshold_px) & valid).sum() / max(valid.sum(), 1))


def verify_exports(models_dir: str, tfrecords: str, config: VerifyConfig = VerifyConfig(),
                   log: Callable[[str], None] = print) -> dict:
    """Rows for the source model and every variant of `models_dir` (see the module docstring)."""
    from model.evaluation import evaluate_model
    from model.metrics import pck_threshold_px
    from model.runner import KerasRunner
    from pipeline.codec import HeatmapCodec

    manifest = load_manifest(models_dir)
    source = manifest["source_model"]
    reference = KerasRunner(source)
    meta = reference.metadata
    if not meta.get("keypoint_names"):
        raise VerifyError(f"the source model {source} has no metadata json beside it; the keypoint "
                          f"definition and crop mode come from there")
    spec = KeypointSpec.from_dict(meta, f"{source} metadata")
    crop_mode, padding = meta.get("crop_mode", "box"), float(meta.get("padding", 1.25))
    limits = [n for n in (config.max_examples, config.diff_examples) if n is not None]
    crops = load_crops(tfrecords, config.split, spec, reference.input_size, reference.stride,
                       crop_mode, padding, min(limits) if limits else None)
    threshold = pck_threshold_px(reference.input_size, reference.stride)
    codec = HeatmapCodec(reference.input_size, reference.stride)
    ref_heatmaps = batched(reference, crops.images)
    ref_coords_quarter = np.asarray(codec.decode(ref_heatmaps, refine=DECODER_REFINE)[0])
    one = crops.images[:1]

    # evaluate_model stops after the batch that reaches max_examples: a divisor as batch size
    # makes it score exactly max_examples records
    batch = max(d for d in range(1, 17) if not config.max_examples or config.max_examples % d == 0)
    scored = {}

    def evaluate(runner) -> float:
        metrics = evaluate_model(runner, tfrecords, config.split, spec, crop_mode=crop_mode,
                                 padding=padding, refine=EVAL_REFINE, batch_size=batch,
                                 max_examples=config.max_examples)
        scored["examples"] = int(metrics["examples"])
        return float(metrics["pck"])

    float_pck = evaluate(reference)
    rows = [{"name": os.path.basename(source), "format": "keras", "quantization": "float32",
             "decoder": False, "size_bytes": file_size(source), "pck": float_pck,
             "float_pck": float_pck, "max_abs_diff": 0.0, "diff_unit": "heatmap",
             "latency_ms": {"tf": median_latency_ms(lambda: reference(one), config.latency_runs)}}]
    log(f"{rows[0]['name']}: PCK {float_pck:.4f}")
    skipped = []
    for variant in manifest["variants"]:
        path = os.path.join(models_dir, variant["path"])
        row = {k: variant[k] for k in ("name", "format", "quantization", "decoder")}
        if not os.path.exists(path):
            raise VerifyError(f"{path} is listed in {MANIFEST_NAME} but missing; re-run the export")
        if variant["format"] == "onnx" and not onnxruntime_available():
            skipped.append({"name": variant["name"], "reason": "onnxruntime is not installed"})
            log(f"{variant['name']}: skipped (onnxruntime is not installed)")
            continue
        row["size_bytes"] = file_size(path)
        runner, timers = open_variant(path, variant, config.threads)
        if variant["decoder"] and variant["format"] != "saved_model":
            coords, _ = runner(crops.images)
            row.update(pck=crop_pck(coords, crops, threshold),
                       float_pck=crop_pck(ref_coords_quarter, crops, threshold),
                       max_abs_diff=float(np.abs(coords - ref_coords_quarter).max()),
                       diff_unit="crop px", refine=DECODER_REFINE)
        else:
            heatmaps = batched(runner, crops.images)
            row.update(pck=evaluate(runner), float_pck=float_pck,
                       max_abs_diff=float(np.abs(heatmaps - ref_heatmaps).max()),
                       diff_unit="heatmap", refine=EVAL_REFINE)
        row["latency_ms"] = {k: median_latency_ms(lambda r=r: r(one), config.latency_runs)
                             for k, r in timers.items()}
        rows.append(row)
        log(f"{row['name']}: PCK {row['pck']:.4f} (float {row['float_pck']:.4f}), max diff "
            f"{row['max_abs_diff']:.4f} {row['diff_unit']}")
    add_ratios(rows)
    return {"models": os.path.abspath(models_dir), "tfrecords": os.path.abspath(tfrecords),
            "split": config.split, "examples": scored["examples"],
            "diff_examples": int(len(crops.images)), "pck_threshold_px": threshold, "rows": rows,
            "skipped": skipped}


def open_variant(path: str, variant: dict, threads: tuple[int, ...]):
    """(runner for scoring, {latency key: runner to time}) of one exported variant."""
    from model.runner import TFLiteRunner, load_runner, read_metadata
    if variant["format"] == "onnx":
        runner = OnnxRunner(path, read_metadata(path))
        return runner, {"ort": runner}
    if variant["format"] == "tflite":
        make = DecoderRunner if variant["decoder"] else TFLiteRunner
        return make(path), {f"{n}t": make(path, num_threads=n) for n in threads}
    runner = load_runner(path)
    return runner, {"tf": runner}


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
    header = ["model", "format", "quant", "size MB", "x f32", "PCK", "float PCK", "dPCK",
              "max |diff|"] + [f"ms {k}" for k in threads]
    lines = []
    for r in report["rows"]:
        ratio = r.get("size_ratio")
        diff = f"{r['max_abs_diff']:.4f}" + (" px" if r["diff_unit"] == "crop px" else "")
        lines.append([r["name"], r["format"], r["quantization"] + ("+dec" if r["decoder"] else ""),
                      f"{r['size_bytes'] / 1e6:.3f}", f"{ratio:.3f}" if ratio is not None else "-",
                      f"{r['pck']:.4f}", f"{r['float_pck']:.4f}", f"{r['pck'] - r['float_pck']:+.4f}",
                      diff] + [f"{r['latency_ms'][k]:.2f}" if k in r["latency_ms"] else "-"
                               for k in threads])
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = (f"{report['split']} split of {report['tfrecords']}: PCK on {report['examples']} "
             f"examples (threshold {report['pck_threshold_px']:.2f} crop px); differences and "
             f"decoder models (+dec) on the first {report['diff_examples']}; latency = median single "
             f"image (t = TFLite interpreter threads, tf = TensorFlow default threads, ort = "
             f"onnxruntime default threads)")
    return "\n".join([title, fmt.format(*header)] + [fmt.format(*row) for row in lines])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="output folder of `python -m export`")
    p.add_argument("--tfrecords", required=True, help="TFRecords folder (convert_to_tfrecord.py)")
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="report path (default <models>/verify.json)")
    p.add_argument("--max_examples", type=int, default=None, help="score the first N records only")
    p.add_argument("--diff_examples", type=int, default=VerifyConfig.diff_examples,
                   help="crops for heatmap differences and decoder models (default 256)")
    p.add_argument("--latency_runs", type=int, default=VerifyConfig.latency_runs)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = VerifyConfig(split=args.split, max_examples=args.max_examples,
                          diff_examples=args.diff_examples, latency_runs=args.latency_runs)
    try:
        report = verify_exports(args.models, args.tfrecords, config)
    except (FileNotFoundError, VerifyError, RecordsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    out = args.json or os.path.join(args.models, "verify.json")
    atomic_write_json(out, report)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
