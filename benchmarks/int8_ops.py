"""Where a TFLite model's CPU time goes, per op type: float32 vs int8, side by side.

    .venv/bin/python -m benchmarks.int8_ops [--variants hg_s2_mobile hg_s2_mobile_tiny]
        [--representative RECORDS] [--num_calibration 16] [--runs 10] [--rounds 3]
        [--threads 1] [--no_xnnpack] [--top 8] [--json OUT]
    .venv/bin/python -m benchmarks.int8_ops --files a.tflite b.tflite   # any files

LiteRT 2.3's Python interpreter has no op profiler (no ``benchmark_model`` in the wheel; the
``experimental_force_delegate_node_profiling`` flag has no reader), and XNNPACK runs a whole
model as one delegate node. So each operator is cut out into a one-op model (its tensors,
their quantization and its constant buffers copied; ``single_op_models``) and timed alone in
the same interpreter settings: median process CPU time of ``runs`` invokes (robust to other
jobs on a shared machine), in turns over all models. The sum over ops is compared with the
whole model's time. ``--no_xnnpack`` times TFLite's builtin kernels instead
(``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``).

Per variant (untrained 2-stack 256x256, ``benchmarks.export.benchmark_model``, calibrated as
there): float32 (``wrap_model``), ``int8 depthwise stem`` (``integer_graph`` with the mobile
stem left a depthwise convolution, depth multiplier 8: the stem int8 had before), ``int8 dense
stem`` (a block-diagonal Conv2D) and ``int8`` (the export's: space_to_depth + 4x4 Conv2D).
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from configs import atomic_write_json  # noqa: E402


def _schema():
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    return schema, flatbuffer_utils


def single_op_models(data: bytes) -> list[dict]:
    """One model per operator of the main graph: {index, op, shape (first input), data}."""
    schema, flatbuffer_utils = _schema()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for index, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        one = schema.ModelT()
        one.version, one.operatorCodes, one.buffers = model.version, [code], [schema.BufferT()]
        tensors, mapping, inputs = [], {}, []

        def add(t):
            if t < 0:
                return t
            if t not in mapping:
                tensor = copy.copy(graph.tensors[t])
                buffer = model.buffers[tensor.buffer] if tensor.buffer else None
                if buffer is not None and buffer.data is not None and len(buffer.data):
                    one.buffers.append(buffer)
                    tensor.buffer = len(one.buffers) - 1
                else:
                    tensor.buffer = 0
                    if t not in op.outputs:
                        inputs.append(len(tensors))
                mapping[t] = len(tensors)
                tensors.append(tensor)
            return mapping[t]

        new = copy.copy(op)
        new.opcodeIndex = 0
        new.outputs = [add(t) for t in op.outputs]
        new.inputs = [add(t) for t in op.inputs]
        sub = schema.SubGraphT()
        sub.tensors, sub.operators, sub.inputs, sub.outputs = tensors, [new], inputs, list(new.outputs)
        one.subgraphs = [sub]
        first = graph.tensors[op.inputs[0]] if len(op.inputs) and op.inputs[0] >= 0 else None
        out.append({"index": index, "op": names[max(code.builtinCode, code.deprecatedBuiltinCode)],
                    "shape": [int(v) for v in first.shape] if first is not None else [],
                    "data": bytes(flatbuffer_utils.convert_object_to_bytearray(one))})
    return out


def make_timer(data: bytes, threads: int, xnnpack: bool, seed: int = 0):
    """A function invoking the model once on fixed random inputs of its input types."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=data, num_threads=threads,
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            value = rng.integers(max(info.min, -128), min(info.max, 255) + 1, detail["shape"])
        else:
            value = rng.uniform(0, 255, detail["shape"])
        interpreter.set_tensor(detail["index"], value.astype(dtype))
    return interpreter.invoke


def profile(files: dict, threads: int, xnnpack: bool, runs: int, rounds: int) -> dict:
    """{label: {"model_ms", "ops": [{index, op, shape, ms}]}} of flatbuffers {label: bytes}."""
    timers, parts = {}, {}
    for label, data in files.items():
        timers[(label, None)] = make_timer(data, threads, xnnpack)
        parts[label] = single_op_models(data)
        for part in parts[label]:
            timers[(label, part["index"])] = make_timer(part["data"], threads, xnnpack)
    from export.verify import interleaved_latency_ms
    times = interleaved_latency_ms(timers, runs, rounds, warmup=2, clock=time.process_time)  # CPU ms
    return {label: {"model_ms": times[(label, None)],
                    "ops": [{k: p[k] for k in ("index", "op", "shape")} | {"ms": times[(label, p["index"])]}
                            for p in parts[label]]}
            for label in files}


def by_type(ops: list[dict]) -> dict:
    totals = collections.defaultdict(lambda: [0, 0.0])
    for op in ops:
        totals[op["op"]][0] += 1
        totals[op["op"]][1] += op["ms"]
    return {k: {"count": n, "ms": ms} for k, (n, ms) in totals.items()}


def format_profile(title: str, result: dict, top: int) -> str:
    labels = list(result)
    types = {label: by_type(result[label]["ops"]) for label in labels}
    names = sorted({n for t in types.values() for n in t},
                   key=lambda n: -max(t.get(n, {"ms": 0})["ms"] for t in types.values()))
    width = max(16, *(len(label) for label in labels))
    lines = [title, f"{'op type':24s}" + "".join(f"{label:>{width + 2}s}" for label in labels)]
    for name in names:
        cells = []
        for label in labels:
            entry = types[label].get(name)
            cells.append(f"{entry['count']:>4d} x {entry['ms']:>8.2f} ms" if entry else "-")
        lines.append(f"{name:24s}" + "".join(f"{c:>{width + 2}s}" for c in cells))
    lines.append(f"{'sum of ops':24s}" + "".join(
        f"{sum(o['ms'] for o in result[label]['ops']):>{width - 1}.2f} ms" for label in labels))
    lines.append(f"{'whole model':24s}" + "".join(
        f"{result[label]['model_ms']:>{width - 1}.2f} ms" for label in labels))
    base = result[labels[0]]["model_ms"]
    lines.append(f"{'x ' + labels[0]:24s}" + "".join(
        f"{result[label]['model_ms'] / base:>{width + 2}.2f}" for label in labels))
    for label in labels:
        slow = sorted(result[label]["ops"], key=lambda o: -o["ms"])[:top]
        lines.append(f"  slowest ops of {label}: " + ", ".join(
            f"#{o['index']} {o['op']} {o['shape']} {o['ms']:.2f} ms" for o in slow))
    return "\n".join(lines)


def variant_files(name: str, calibration, num_keypoints: int) -> dict:
    """{label: flatbuffer} of one benchmark variant: float32, then int8 with the mobile stem
    written each way ``export.convert.integer_graph`` knows (the export's is ``int8``)."""
    import contextlib
    import io

    from benchmarks.export import benchmark_model
    from export.convert import convert_tflite, integer_graph, tflite_converter
    from export.quantize import set_raw_pixel_input
    model = benchmark_model(name, num_keypoints)
    files = {"float32": convert_tflite(model, "none", calibration)}
    for stem in ("depthwise", "dense"):
        converter = tflite_converter(integer_graph(model, stem=stem), "int8", calibration, False)
        with contextlib.redirect_stdout(io.StringIO()):
            files[f"int8 {stem} stem"] = set_raw_pixel_input(converter.convert())
    files["int8"] = convert_tflite(model, "int8", calibration)
    return files


def main(argv=None) -> int:
    from benchmarks.export import VARIANTS, calibration_for
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   default=["hg_s2_mobile", "hg_s2_mobile_tiny"])
    p.add_argument("--files", nargs="+", default=None, help="profile these .tflite files instead")
    p.add_argument("--representative", default=None)
    p.add_argument("--num_calibration", type=int, default=16)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no_xnnpack", action="store_true", help="builtin kernels, no XNNPACK")
    p.add_argument("--top", type=int, default=6, help="slowest single ops listed per model")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    missing = [f for f in args.files or [] if not os.path.isfile(f)]
    if missing:
        print(f"error: --files {' '.join(missing)}: no such file", file=sys.stderr)
        return 2
    setting = (f"{args.threads} thread(s), {'builtin kernels' if args.no_xnnpack else 'XNNPACK'}, "
               f"median process CPU ms of {args.runs} runs in {args.rounds} turns")
    report = {"setting": setting, "cpu_count": os.cpu_count(), "profiles": {}}
    if args.files:
        groups = {"files": {os.path.basename(f): open(f, "rb").read() for f in args.files}}
    else:
        with tempfile.TemporaryDirectory() as workdir:
            calibration, num_keypoints = calibration_for(args, workdir)
        groups = {name: variant_files(name, calibration, num_keypoints) for name in args.variants}
    for name, files in groups.items():
        result = profile(files, args.threads, not args.no_xnnpack, args.runs, args.rounds)
        report["profiles"][name] = {label: {"model_ms": r["model_ms"], "by_type": by_type(r["ops"]),
                                            "ops": r["ops"]} for label, r in result.items()}
        print(format_profile(f"{name}: {setting}", result, args.top), flush=True)
        print()
    if args.json:
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
