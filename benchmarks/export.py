"""TFLite file sizes and CPU latency of the 2-stack hourglass variants per quantization mode.

    .venv/bin/python -m benchmarks.export [--variants hg_s2 hg_s2_mobile hg_s2_mobile_tiny]
        [--quantize none float16 dynamic int8] [--num_calibration 8] [--runs 20] [--json OUT]

Models are untrained (size does not depend on training) at 256x256 with 17 keypoints. Their
BatchNorm statistics are first set to random non-trivial values: a fresh model starts each
residual block's last BatchNorm at gamma = 0, which folds into all-zero convolution weights
that the converter stores once for many tensors and that would make the files look smaller than
a trained model's. int8 is calibrated on a handful of synthetic crops that take the real path
(pipeline.synthetic -> pipeline.convert -> eval parser), as `python -m export` does.

Latency: one uint8 image through the LiteRT interpreter (XNNPACK), median of `runs` invokes
after 3 warm-ups, at 1 and 2 interpreter threads. Numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from configs import atomic_write_json, builtin_spec  # noqa: E402
from export.convert import QUANT_NAMES, QUANTIZATIONS, Calibration, convert_tflite  # noqa: E402
from export.verify import median_latency_ms  # noqa: E402

INPUT_SIZE = (256, 256)
VARIANTS = {
    "hg_s2": dict(num_channels=256, mobile=False),
    "hg_s2_mobile": dict(num_channels=256, mobile=True),
    "hg_s2_mobile_tiny": dict(num_channels=128, mobile=True),
}


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm random, trained-looking gamma/beta/mean/variance."""
    import keras
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([1.0 + 0.2 * rng.standard_normal(gamma), 0.1 * rng.standard_normal(beta),
                               0.1 * rng.standard_normal(mean), 0.5 + rng.random(var)])


def synthetic_calibration(num: int, workdir: str) -> Calibration:
    """`num` eval crops of synthetic figures, through converter + eval parser."""
    from export.records import load_crops
    from pipeline.convert import ConvertOptions, convert_dataset
    from pipeline.synthetic import generate_dataset

    summary = generate_dataset(os.path.join(workdir, "synthetic"), num_train=num, num_val=0,
                               image_size=INPUT_SIZE, seed=1)
    records = os.path.join(workdir, "records")
    convert_dataset("coco", summary["train"]["json"], summary["train"]["image_dir"], records,
                    split="train", options=ConvertOptions(num_workers=1, quiet=True))
    crops = load_crops(records, "train", builtin_spec("coco"), INPUT_SIZE, 4, "box", 1.25)
    return Calibration(crops.images, records, "train")


def tflite_latency(data: bytes, image: np.ndarray, threads: int, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]

    def invoke():
        interpreter.set_tensor(index, image)
        interpreter.invoke()

    return median_latency_ms(invoke, runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--quantize", nargs="+", choices=QUANTIZATIONS, default=list(QUANTIZATIONS))
    p.add_argument("--num_calibration", type=int, default=8)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from model import build_hourglass, count_trainable_parameters
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        calibration = synthetic_calibration(args.num_calibration, workdir)
        image = calibration.images[:1]
        for name in args.variants:
            model = build_hourglass(17, num_stacks=2, input_size=INPUT_SIZE, **VARIANTS[name])
            randomize_batchnorm(model)
            params = count_trainable_parameters(model)
            for quantization in args.quantize:
                started = time.time()
                data = convert_tflite(model, quantization, calibration)
                row = {"variant": name, "parameters": params, "quantization": QUANT_NAMES[quantization],
                       "size_bytes": len(data), "convert_s": round(time.time() - started, 1),
                       "latency_ms": {f"{t}t": tflite_latency(data, image, t, args.runs) for t in (1, 2)}}
                rows.append(row)
                print(f"{name:18s} {row['quantization']:8s} {len(data) / 1e6:7.2f} MB  "
                      f"1t {row['latency_ms']['1t']:8.1f} ms  2t {row['latency_ms']['2t']:8.1f} ms  "
                      f"(converted in {row['convert_s']} s)", flush=True)
    print()
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, {"input_size": list(INPUT_SIZE), "num_keypoints": 17,
                                      "calibration_crops": args.num_calibration, "rows": rows})
    return 0


def format_table(rows: list[dict]) -> str:
    lines = [f"{'variant':18s} {'params':>9s} {'quant':8s} {'size MB':>8s} {'x f32':>6s} "
             f"{'ms 1t':>8s} {'ms 2t':>8s} {'lat x f32 (1t)':>14s}"]
    for r in rows:
        base = next((b for b in rows
                     if b["variant"] == r["variant"] and b["quantization"] == "float32"), None)
        size_x = f"{r['size_bytes'] / base['size_bytes']:.3f}" if base else "-"
        lat_x = f"{r['latency_ms']['1t'] / base['latency_ms']['1t']:.2f}" if base else "-"
        lines.append(f"{r['variant']:18s} {r['parameters']:>9d} {r['quantization']:8s} "
                     f"{r['size_bytes'] / 1e6:>8.2f} {size_x:>6s} {r['latency_ms']['1t']:>8.1f} "
                     f"{r['latency_ms']['2t']:>8.1f} {lat_x:>14s}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
