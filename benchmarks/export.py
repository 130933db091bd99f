"""TFLite file sizes and CPU latency of the 2-stack hourglass variants per quantization mode,
every model timed in turns in one run so that the ratios share the machine's conditions.

    .venv/bin/python -m benchmarks.export [--variants hg_s2_mobile hg_s2_mobile_tiny]
        [--quantize none int8 int16x8 mixed] [--representative RECORDS] [--num_calibration 16]
        [--mixed_keep 4] [--runs 20] [--rounds 5] [--json OUT]

Models are untrained (size and latency do not depend on training) at 256x256. Their
BatchNorm statistics are first set to random non-trivial values: a fresh model starts each
residual block's last BatchNorm at gamma = 0, which folds into all-zero convolution weights
that the converter stores once for many tensors and that would make the files look smaller than
a trained model's. The integer modes are calibrated on eval crops of `--representative` (real
records, e.g. the LSPET records of `benchmarks.learn_human`; the models then have its keypoint
count) through the eval parser, as `python -m export` does; without it, on synthetic crops that
take the same path (pipeline.synthetic -> pipeline.convert -> eval parser), 17 keypoints.
``mixed`` keeps the `--mixed_keep` layers of largest quantization error (the quantization
debugger's ranking on the calibration crops) in float: an untrained model has no PCK to
select by, so this measures what keeping that many layers in float costs.

Latency: one raw-pixel image through the LiteRT interpreter (XNNPACK), at 1 and 2 interpreter
threads: the median wall time of `runs` invokes, taken in `rounds` turns over all models after
2 warm-ups each (int16x8, which LiteRT runs on its reference kernels at seconds per image,
`runs / 10`), and at 1 thread also the median CPU time of the process per invoke (robust to
other jobs on a shared machine). Numbers depend on the machine and its load.
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
from export.convert import QUANT_NAMES, QUANTIZATIONS, Calibration, convert_mixed, convert_tflite  # noqa: E402

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


def synthetic_calibration(num: int, workdir: str) -> tuple[Calibration, int]:
    """(`num` eval crops of synthetic figures, through converter + eval parser; 17 keypoints)."""
    from export.records import load_crops
    from pipeline.convert import ConvertOptions, convert_dataset
    from pipeline.synthetic import generate_dataset

    summary = generate_dataset(os.path.join(workdir, "synthetic"), num_train=num, num_val=0,
                               image_size=INPUT_SIZE, seed=1)
    records = os.path.join(workdir, "records")
    convert_dataset("coco", summary["train"]["json"], summary["train"]["image_dir"], records,
                    split="train", options=ConvertOptions(num_workers=1, quiet=True))
    crops = load_crops(records, "train", builtin_spec("coco"), INPUT_SIZE, 4, "box", 1.25)
    return Calibration(crops.images, records, "train"), 17


def records_calibration(records: str, num: int) -> tuple[Calibration, int]:
    """(the first `num` 256x256 eval crops of the records' train split (else val), box crops
    with padding 1.25; the records' keypoint count)."""
    from configs import KeypointSpec
    from export.records import load_crops, pick_split, read_info

    spec = KeypointSpec.from_dict(read_info(records), records)
    split = pick_split(records, ("train", "val"))
    crops = load_crops(records, split, spec, INPUT_SIZE, 4, "box", 1.25, max_examples=num)
    return Calibration(crops.images, records, split), spec.num_keypoints


def calibration_for(args, workdir: str) -> tuple[Calibration, int]:
    if args.representative:
        return records_calibration(args.representative, args.num_calibration)
    return synthetic_calibration(args.num_calibration, workdir)


def benchmark_model(name: str, num_keypoints: int, seed: int = 0):
    """An untrained 2-stack 256x256 variant with randomized BatchNorm statistics."""
    import keras

    from model import build_hourglass
    keras.utils.set_random_seed(seed)
    model = build_hourglass(num_keypoints, num_stacks=2, input_size=INPUT_SIZE, **VARIANTS[name])
    randomize_batchnorm(model, seed)
    return model


def convert(model, quantization: str, calibration: Calibration, mixed_keep: int) -> tuple[bytes, dict]:
    """(flatbuffer, notes) of one mode as `python -m export` writes it (mixed: `mixed_keep`
    worst layers in float)."""
    if quantization == "mixed":
        data, report = convert_mixed(model, calibration, None, keep=mixed_keep, log=lambda _: None)
        return data, {"float_layers": [r["layer"] for r in report["float_layers"]]}
    return convert_tflite(model, quantization, calibration), {}


def tflite_timer(data: bytes, image: np.ndarray, threads: int):
    """A function running one invoke of the model on `image` (cast to the input type)."""
    from model.runner import open_interpreter
    interpreter = open_interpreter(data, threads)
    detail = interpreter.get_input_details()[0]
    x = image.astype(detail["dtype"])

    def invoke():
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
    return invoke


def time_in_turns(timers: dict, runs: dict, rounds: int, warmup: int = 2) -> dict:
    """{key: (median wall ms, median process CPU ms)} of each timer, all timers taking
    `rounds` turns of `runs[key] / rounds` invokes."""
    for fn in timers.values():
        for _ in range(warmup):
            fn()
    wall = {k: [] for k in timers}
    cpu = {k: [] for k in timers}
    for _ in range(max(1, rounds)):
        for key, fn in timers.items():
            for _ in range(max(1, -(-runs[key] // max(1, rounds)))):
                w, c = time.perf_counter(), time.process_time()
                fn()
                cpu[key].append(time.process_time() - c)
                wall[key].append(time.perf_counter() - w)
    return {k: (float(np.median(wall[k]) * 1e3), float(np.median(cpu[k]) * 1e3)) for k in timers}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   default=["hg_s2_mobile", "hg_s2_mobile_tiny"])
    p.add_argument("--quantize", nargs="+", choices=QUANTIZATIONS,
                   default=["none", "int8", "int16x8", "mixed"])
    p.add_argument("--representative", default=None,
                   help="TFRecords folder whose train crops calibrate (default: synthetic crops)")
    p.add_argument("--num_calibration", type=int, default=16)
    p.add_argument("--mixed_keep", type=int, default=4, help="mixed: layers kept in float")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.representative and not os.path.isfile(os.path.join(args.representative, "dataset_info.json")):
        print(f"error: --representative {args.representative}: no dataset_info.json there; pass a "
              f"folder written by convert_to_tfrecord.py", file=sys.stderr)
        return 2

    from model import count_trainable_parameters
    rows, timers, runs = [], {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        calibration, num_keypoints = calibration_for(args, workdir)
    image = calibration.images[:1]
    for name in args.variants:
        model = benchmark_model(name, num_keypoints)
        params = count_trainable_parameters(model)
        for quantization in args.quantize:
            started = time.time()
            data, notes = convert(model, quantization, calibration, args.mixed_keep)
            row = {"variant": name, "parameters": params, "quantization": QUANT_NAMES[quantization],
                   "size_bytes": len(data), "convert_s": round(time.time() - started, 1), **notes}
            for threads in args.threads:
                timers[(len(rows), threads)] = tflite_timer(data, image, threads)
                # int16x8 runs on reference kernels, seconds per image: a tenth of the runs
                runs[(len(rows), threads)] = (max(args.rounds, args.runs // 10)
                                              if quantization == "int16x8" else args.runs)
            rows.append(row)
            print(f"converted {name} {row['quantization']}: {len(data) / 1e6:.2f} MB in "
                  f"{row['convert_s']} s", flush=True)
    print(f"timing {len(timers)} model/thread settings: {args.runs} runs each (int16x8: "
          f"{max(args.rounds, args.runs // 10)}) in {args.rounds} turns", flush=True)
    for (index, threads), (wall, cpu) in time_in_turns(timers, runs, args.rounds).items():
        rows[index].setdefault("latency_ms", {})[f"{threads}t"] = wall
        if threads == 1:
            rows[index]["cpu_ms_1t"] = cpu
    print()
    print(format_table(rows))
    if args.json:
        atomic_write_json(args.json, {
            "input_size": list(INPUT_SIZE), "num_keypoints": num_keypoints,
            "calibration": calibration.describe(), "mixed_keep": args.mixed_keep,
            "runs": args.runs, "rounds": args.rounds, "cpu_count": os.cpu_count(), "rows": rows})
    return 0


def format_table(rows: list[dict]) -> str:
    threads = sorted({k for r in rows for k in r["latency_ms"]})
    head = (f"{'variant':18s} {'params':>9s} {'quant':8s} {'size MB':>8s} {'x f32':>6s} "
            + " ".join(f"{'ms ' + k:>8s} {'x f32':>6s}" for k in threads)
            + f" {'cpu ms 1t':>9s} {'x f32':>6s}")
    lines = [head]
    for r in rows:
        base = next((b for b in rows
                     if b["variant"] == r["variant"] and b["quantization"] == "float32"), None)

        def ratio(value, base_value):
            return f"{value / base_value:.2f}" if base else "-"
        size_x = ratio(r["size_bytes"], base["size_bytes"] if base else 1)
        lat = " ".join(f"{r['latency_ms'][k]:>8.1f} "
                       f"{ratio(r['latency_ms'][k], base['latency_ms'][k] if base else 1):>6s}"
                       for k in threads)
        cpu = r.get("cpu_ms_1t")
        cpu_text = (f"{cpu:>9.1f} {ratio(cpu, base['cpu_ms_1t'] if base else 1):>6s}"
                    if cpu is not None else f"{'-':>9s} {'-':>6s}")
        lines.append(f"{r['variant']:18s} {r['parameters']:>9d} {r['quantization']:8s} "
                     f"{r['size_bytes'] / 1e6:>8.2f} {size_x:>6s} {lat} {cpu_text}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
