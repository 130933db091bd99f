"""What a TFLite file is, read from the file, and the integer modes' flatbuffer steps.

- ``tflite_facts``: op types, tensor types (activations and constants apart), the input's and
  outputs' quantization, and ``integer_only`` (no float tensor anywhere in the file).
- ``claim_problems``: what a file's model card says (quantization, ``integer_only``, inputs)
  that the file is not; ``export.verify`` fails such a variant.
- ``gpu_compatibility``: ``tf.lite.experimental.Analyzer``'s GPU-delegate check.
- ``set_raw_pixel_input``: the integer image input read as raw pixels (scale 1, zero point 0).
- ``rank_layers`` / ``quantize_calibrated`` / ``select_float_layers``: the accuracy-guided
  mixed mode (``--quantize mixed``): TF's quantization debugger ranks the int8 layers by their
  error on calibration crops; the worst are kept in float, doubling their number, until the
  PCK on labelled crops is within ``MIXED_MAX_PCK_DROP`` of the float model's.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import io
import math
from typing import Callable, Sequence

import numpy as np

MIXED_MAX_PCK_DROP = 0.005          # 0.5 PCK points
FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64")
# ops that may read the integer image input: they take their input scaling from the tensor's
# quantization parameters when the interpreter prepares them (nothing precomputed in the file);
# DEQUANTIZE when mixed keeps the first layer in float
RAW_PIXEL_READERS = ("QUANTIZE", "MUL", "DEQUANTIZE")


class QuantizeError(ValueError):
    """A flatbuffer that cannot be given what is asked; the message says why."""


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    return schema, flatbuffer_utils


def _names(enum) -> dict:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def _read(data: bytes):
    schema, flatbuffer_utils = _schema()
    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def op_names(model) -> list[str]:
    """The builtin op name of every operator of the main graph, in order."""
    schema, _ = _schema()
    names = _names(schema.BuiltinOperator)
    codes = model.operatorCodes
    return [names.get(max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode),
                      "CUSTOM") for op in model.subgraphs[0].operators]


def _quantization(tensor) -> dict:
    q = tensor.quantization
    scales = list(q.scale) if q is not None and q.scale is not None else []
    zeros = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
    return {"scale": float(scales[0]) if len(scales) == 1 else (0.0 if not scales else None),
            "zero_point": int(zeros[0]) if len(zeros) == 1 else 0}


def tflite_facts(data: bytes) -> dict:
    """What the file is: ``ops`` {type: count}, ``activation_types`` / ``constant_types`` (tensor
    types of computed tensors, graph input included, and of stored ones), ``float_tensors``
    (count), ``integer_only`` (no float tensor at all), ``input`` and ``outputs`` (type, scale,
    zero point; scale 0 = not quantized) and ``first_ops`` (the ops reading the input)."""
    schema, _ = _schema()
    model = _read(data)
    graph = model.subgraphs[0]
    types = _names(schema.TensorType)

    def stored(tensor):
        buffer = model.buffers[tensor.buffer] if tensor.buffer else None
        return buffer is not None and buffer.data is not None and len(buffer.data) > 0

    activations = collections.Counter(types[t.type] for t in graph.tensors if not stored(t))
    constants = collections.Counter(types[t.type] for t in graph.tensors if stored(t))
    floats = sum(n for kind, n in (activations + constants).items() if kind in FLOAT_TYPES)
    ops = op_names(model)

    def io_entry(index):
        tensor = graph.tensors[index]
        return dict(dtype=types[tensor.type].lower(), shape=[int(v) for v in tensor.shape],
                    **_quantization(tensor))

    first = graph.inputs[0]
    return {"ops": dict(sorted(collections.Counter(ops).items())),
            "activation_types": dict(sorted(activations.items())),
            "constant_types": dict(sorted(constants.items())),
            "float_tensors": int(floats), "integer_only": floats == 0,
            "input": io_entry(first), "outputs": [io_entry(i) for i in graph.outputs],
            "first_ops": [name for name, op in zip(ops, graph.operators) if first in op.inputs]}


def set_raw_pixel_input(data: bytes) -> bytes:
    """The flatbuffer with its integer image input declared as raw pixels: scale 1, zero point
    0. The converter gives the input the calibrated range (255/32767 per step for int16, or
    250/255 when no calibration crop reached 255); the ops reading it (``RAW_PIXEL_READERS``)
    derive their arithmetic from the tensor's parameters, so the file then reads the pixels a
    runner feeds as they are (pixels past the calibrated range clip in the next tensor)."""
    schema, flatbuffer_utils = _schema()
    model = _read(data)
    graph = model.subgraphs[0]
    index = graph.inputs[0]
    tensor = graph.tensors[index]
    types = _names(schema.TensorType)
    readers = [name for name, op in zip(op_names(model), graph.operators) if index in op.inputs]
    if types[tensor.type] not in ("UINT8", "INT8", "INT16") or not readers or any(
            r not in RAW_PIXEL_READERS for r in readers):
        raise QuantizeError(f"the converted model's input is {types[tensor.type].lower()} read by "
                            f"{', '.join(readers) or 'nothing'}; raw pixels can only be declared on "
                            f"an integer input read by {', '.join(RAW_PIXEL_READERS)}")
    quantization = tensor.quantization or schema.QuantizationParametersT()
    quantization.scale, quantization.zeroPoint = [1.0], [0]
    quantization.min = quantization.max = None
    tensor.quantization = quantization
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ----------------------------------------------------------------------------- claims


def claim_problems(card, facts: dict) -> list[str]:
    """What ``card`` (a ``model.card.ModelCard`` of a TFLite file) claims that the file
    (``tflite_facts``) is not; [] when the card is truthful."""
    problems = []
    quantization = card.quantization
    acts, consts = set(facts["activation_types"]), set(facts["constant_types"])
    inner = acts - {"UINT8"}            # the raw-pixel input of the integer and float modes
    claimed = card.extra.get("integer_only")
    if claimed is not None and bool(claimed) != facts["integer_only"]:
        problems.append(f"card says integer_only {bool(claimed)} but the file holds "
                        f"{facts['float_tensors']} float tensors")
    expected = {
        "float32": (not consts & {"INT8", "FLOAT16"} and "FLOAT32" in inner,
                    "float32 weights and activations"),
        "float16": ("FLOAT16" in consts, "float16 weights"),
        "dynamic": ("INT8" in consts and "FLOAT32" in inner and "INT8" not in inner,
                    "int8 weights with float activations"),
        "int8": ("INT8" in inner and "INT16" not in inner
                 and (facts["integer_only"] or card.decoder is not None),
                 "int8 activations, no float tensor outside a decoder"),
        "int16x8": ("INT16" in inner and "INT8" in consts
                    and (facts["integer_only"] or card.decoder is not None),
                    "int16 activations and int8 weights, no float tensor outside a decoder"),
        "mixed": ("INT8" in inner and (bool(card.extra.get("float_layers")) ==
                                       ("FLOAT32" in inner and card.decoder is None)
                                       or card.decoder is not None),
                  "int8 activations, float exactly where float layers are listed"),
    }
    if quantization in expected and not expected[quantization][0]:
        problems.append(f"card says {quantization} ({expected[quantization][1]}) but the file's "
                        f"activations are {sorted(acts)} and its constants {sorted(consts)}")
    if card.inputs:
        said = card.inputs[0]
        got = facts["input"]
        if (said.get("dtype"), float(said.get("scale", 0.0)), int(said.get("zero_point", 0))) != (
                got["dtype"], got["scale"], got["zero_point"]):
            problems.append(f"card's input {said.get('dtype')} (scale {said.get('scale')}, zero point "
                            f"{said.get('zero_point')}) is not the file's {got['dtype']} (scale "
                            f"{got['scale']}, zero point {got['zero_point']})")
    got = facts["input"]
    if got["dtype"] != "float32" and (got["scale"], got["zero_point"]) not in ((0.0, 0), (1.0, 0)):
        problems.append(f"input {got['dtype']} has scale {got['scale']}, zero point "
                        f"{got['zero_point']}: runners feed raw pixels, which need scale 1 and "
                        f"zero point 0 (or none)")
    return problems


def gpu_compatibility(data: bytes) -> dict:
    """``tf.lite.experimental.Analyzer``'s GPU-delegate check: {compatible, warnings}."""
    import tensorflow as tf
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tf.lite.experimental.Analyzer.analyze(model_content=bytes(data), gpu_compatibility=True)
    text = out.getvalue()
    warnings = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    return {"compatible": "looks compatible with GPU delegate" in text and not warnings,
            "warnings": warnings}


# ----------------------------------------------------------------------------- mixed


def rank_layers(converter, representative: Callable, log: Callable[[str], None] = print
                ) -> tuple[bytes, list[dict]]:
    """(calibrated model, quantized layers worst first). ``converter`` is set up for int8
    with its representative dataset; ``tf.lite.experimental.QuantizationDebugger`` runs each
    int8 layer beside its float version on ``representative()`` and the layers are ranked by
    their RMSE in units of their quantization step (``rmse/scale``, the debugger guide's
    measure). Each entry: tensor (the layer's output, as the converter names it), op, error."""
    import tensorflow as tf
    with contextlib.redirect_stdout(io.StringIO()):
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=representative)
        debugger.run()
    table = io.StringIO()
    debugger.layer_statistics_dump(table)
    table.seek(0)
    ranked = []
    for row in csv.DictReader(table):
        scale = float(row["scale"])
        error = math.sqrt(float(row["mean_squared_error"])) / scale if scale else 0.0
        ranked.append({"tensor": row["tensor_name"], "op": row["op_name"],
                       "rmse_per_step": round(error, 4)})
    ranked.sort(key=lambda r: -r["rmse_per_step"])
    log(f"quantization debugger: {len(ranked)} int8 layers ranked; worst "
        + ", ".join(f"{r['op']} {r['rmse_per_step']:.2f}" for r in ranked[:3]))
    return debugger.calibrated_model, ranked


def quantize_calibrated(calibrated: bytes, float_nodes: Sequence[str], float_output: bool) -> bytes:
    """The int8 model of a calibrated flatbuffer with the layers whose outputs are
    ``float_nodes`` kept in float (TF's MLIR quantizer, as the converter and the debugger call
    it); uint8 raw-pixel input, int8 heatmaps (float outputs when ``float_output``)."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize
    with contextlib.redirect_stdout(io.StringIO()):
        data = mlir_quantize(calibrated, input_data_type=tf.uint8,
                             output_data_type=tf.float32 if float_output else tf.int8,
                             denylisted_nodes=list(float_nodes) or None)
    return set_raw_pixel_input(data)


def select_float_layers(calibrated: bytes, ranked: list[dict], score: Callable[[bytes], float],
                        float_score: float, float_output: bool,
                        max_drop: float = MIXED_MAX_PCK_DROP,
                        log: Callable[[str], None] = print) -> tuple[bytes, dict]:
    """(model, report): the worst 0, 1, 2, 4, ... layers of ``ranked`` kept in float until
    ``float_score - score(model) <= max_drop`` (all of them at worst). The report lists the
    layers kept and every count tried with its score."""
    counts = [0] + [2 ** i for i in range(max(1, len(ranked)).bit_length()) if 2 ** i < len(ranked)]
    counts.append(len(ranked))
    tried = []
    for count in dict.fromkeys(counts):
        data = quantize_calibrated(calibrated, [r["tensor"] for r in ranked[:count]], float_output)
        value = float(score(data))
        tried.append({"float_layers": count, "pck": round(value, 6)})
        log(f"mixed: {count} layer(s) in float -> PCK {value:.4f} (float {float_score:.4f})")
        if float_score - value <= max_drop:
            break
    return data, {"float_layers": ranked[:count], "max_pck_drop": max_drop,
                  "float_pck": round(float(float_score), 6), "pck": tried[-1]["pck"],
                  "tried": tried, "ranked_layers": len(ranked)}


def run_tflite(data: bytes, images: np.ndarray) -> list[np.ndarray]:
    """Every output of a batch-1 flatbuffer for each image (raw pixels cast to the input type,
    outputs dequantized), stacked: [outputs][N, ...]."""
    from model.runner import open_interpreter
    interpreter = open_interpreter(data)
    inp = interpreter.get_input_details()[0]
    outs = interpreter.get_output_details()
    results = [[] for _ in outs]
    for image in np.asarray(images, np.uint8):
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        for keep, detail in zip(results, outs):
            value = interpreter.get_tensor(detail["index"]).astype(np.float32)
            scale, zero = detail["quantization"]
            keep.append((value - zero) * scale if scale else value)
    return [np.concatenate(r) for r in results]


def float_layer_names(ranked: Sequence[dict], layer_names: Sequence[str]) -> list[dict]:
    """The kept layers for the card: each entry of ``ranked`` with ``layer``, the Keras layer
    (of ``layer_names``) whose name its converter tensor name starts with (a fused
    conv + BN + ReLU is named by its ReLU), or the tensor name itself (the model's output)."""
    by_length = sorted(layer_names, key=len, reverse=True)
    out = []
    for entry in ranked:
        parts = [p for chunk in entry["tensor"].split(";") for p in chunk.split("/")]
        layer = next((n for part in parts for n in by_length if part.startswith(n)), entry["tensor"])
        out.append({"layer": layer, **entry})
    return out


__all__ = ["MIXED_MAX_PCK_DROP", "QuantizeError", "tflite_facts", "set_raw_pixel_input",
           "claim_problems", "gpu_compatibility", "rank_layers", "quantize_calibrated",
           "select_float_layers", "run_tflite", "float_layer_names", "op_names"]

