"""A trained `.keras` hourglass -> SavedModel, TFLite (and optionally ONNX) files.

Each file carries its model card (``model.card``: the source's keypoints, architecture, crop
and codec, plus format, quantization and tensors) inside it (SavedModel ``assets.extra``,
TFLite metadata; ONNX only beside it), with a readable json copy beside it.

Every exported model keeps only the LAST stack's heatmaps and takes uint8 RGB pixels: the
wrapper casts them to float and the model normalizes inside, so device code feeds the crop as
it is. TFLite models have batch 1.

Quantization modes (`QUANTIZATIONS`), TFLite only:
- ``none``: float32.
- ``float16``: float16 weights, float32 compute.
- ``dynamic``: int8 weights, float activations (dynamic-range).
- ``int8``: full integer (TFLITE_BUILTINS_INT8): int8 weights and activations, calibrated on
  eval crops of real records; input uint8 pixels (not quantized: the cast is the model's first
  op), output int8 heatmaps with a scale and zero point (in the model card).

``with_decoder``: the TFLite models end in the codec's decoder
(``pipeline.codec.HeatmapCodec.decode``, 'quarter' refinement) and output ``keypoints``
float32 [1, K, 2] (crop-input pixels) and ``confidence`` float32 [1, K] (named
``*_decoder.tflite``; in int8 the heatmaps stay int8 and the decoder's few ops run in float);
the SavedModel keeps ``serving_default`` (heatmaps) and gets a second signature ``keypoints``.

ONNX (``--format onnx``, float32, any batch, same input and outputs as the SavedModel's
default signature, or the decoder's outputs) is an optional extra through tf2onnx, which is not
a dependency of the project: tf2onnx 1.17.0 with onnx 1.23 converts these models under
TF 2.21 / protobuf 7 and onnxruntime matches Keras within 1e-5.

Exporting again into the same folder (same source model) adds to its manifest, so heatmap and
decoder models can live side by side.

Converted with ``TFLiteConverter.from_keras_model`` (``from_concrete_functions`` fails on Keras 3
models during calibration, see ../shared/reference/stack-facts.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import time
from typing import Callable, Optional

import numpy as np

from configs import atomic_write_json
from model.card import (
    ModelCard,
    embed_in_saved_model,
    embed_in_tflite,
    metadata_path,
    read_card,
    write_card_beside,
)

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
QUANT_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}
DECODER_REFINE = "quarter"
MANIFEST_NAME = "export_manifest.json"
SAVED_MODEL_DIR = "saved_model"
INPUT_NAME = "image"
HEATMAP_NAME = "heatmaps"
KEYPOINT_NAMES_OUT = ("keypoints", "confidence")
ONNX_OPSET = 17


class ExportError(ValueError):
    """A model or option that cannot be exported; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to write. `quantizations` apply to TFLite; SavedModel and ONNX are float32."""

    formats: tuple[str, ...] = ("tflite",)
    quantizations: tuple[str, ...] = ("none",)
    with_decoder: bool = False

    def __post_init__(self):
        for name, values, allowed in (("format", self.formats, FORMATS),
                                      ("quantize", self.quantizations, QUANTIZATIONS)):
            if not values:
                raise ExportError(f"--{name}: give at least one of {', '.join(allowed)}")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ExportError(f"--{name} {' '.join(bad)}: use {', '.join(allowed)}")
        object.__setattr__(self, "formats", tuple(dict.fromkeys(self.formats)))
        object.__setattr__(self, "quantizations", tuple(dict.fromkeys(self.quantizations)))

    @property
    def needs_calibration(self) -> bool:
        return "tflite" in self.formats and "int8" in self.quantizations


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration crops (uint8 [N, H, W, 3]) and where they came from."""

    images: np.ndarray
    tfrecords: str = ""
    split: str = ""

    def describe(self) -> dict:
        return {"tfrecords": os.path.abspath(self.tfrecords) if self.tfrecords else None,
                "split": self.split or None, "num_examples": int(len(self.images)),
                "parser": "eval (Parser.parse_eval), batch 1"}


# ----------------------------------------------------------------------------- source


def check_model_path(model_path: str) -> None:
    """A clear error for a missing file or one that is not a `.keras` file."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"--model_path {model_path}: no such file")
    if os.path.isdir(model_path) or not model_path.endswith(".keras"):
        raise ExportError(f"--model_path {model_path}: expected a .keras file written by the trainer "
                          f"(e.g. logs/000/final.keras)")


def load_source(model_path: str):
    """(keras.Model, its ModelCard or None) of a trainer's `.keras` file."""
    import keras
    check_model_path(model_path)
    try:
        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds for a bad file
        raise ExportError(f"--model_path {model_path}: cannot be loaded as a Keras model "
                          f"({type(e).__name__}: {e})") from e
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ExportError(f"{model_path}: expected one image input [B, H, W, 3], got "
                          f"{[tuple(i.shape) for i in model.inputs]}")
    try:
        card, _ = read_card(model_path)
    except ValueError as e:
        raise ExportError(str(e)) from e
    return model, card


def model_geometry(model) -> tuple[tuple[int, int], int, int]:
    """((H, W) input, stride, K) read from the model's input and last output."""
    _, h, w, _ = model.inputs[0].shape
    out = model.outputs[-1].shape
    return (int(h), int(w)), int(h) // int(out[1]), int(out[-1])


def last_stack(outputs):
    """The last stack's heatmaps of a model call (Keras unwraps one-output lists)."""
    return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


# ----------------------------------------------------------------------------- wrappers


def _decoder_layer_class():
    import keras

    from pipeline.codec import HeatmapCodec

    class KeypointDecoder(keras.layers.Layer):
        """Heatmaps [B, h, w, K] -> (keypoints [B, K, 2] crop px, confidence [B, K])."""

        def __init__(self, input_size, stride, refine=DECODER_REFINE, **kwargs):
            super().__init__(**kwargs)
            self.codec = HeatmapCodec(input_size, stride)
            self.refine = refine

        def call(self, heatmaps):
            return self.codec.decode(heatmaps, refine=self.refine)

        def compute_output_shape(self, shape):
            return (shape[0], shape[-1], 2), (shape[0], shape[-1])

    return KeypointDecoder


def wrap_model(model, with_decoder: bool = False, batch_size: Optional[int] = None):
    """keras.Model: uint8 `image` [B, H, W, 3] -> last-stack heatmaps (one output), or with
    the decoder -> [keypoints [B, K, 2] crop px, confidence [B, K]]. B fixed when batch_size."""
    import keras
    (h, w), stride, _ = model_geometry(model)
    image = keras.Input(shape=(h, w, 3), batch_size=batch_size, dtype="uint8", name=INPUT_NAME)
    # The same layers (shared weights) re-applied to a uint8 input: one flat graph rather than
    # a model nested in a model. The hourglass's first layer (Rescaling) casts the pixels.
    first = next(layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer))
    if not isinstance(first, keras.layers.Rescaling):
        raise ExportError(f"model {model.name!r}: expected the hourglass's first layer to be "
                          f"Rescaling (RGB 0-255 -> [-1, 1]); got {type(first).__name__}")
    flat = keras.models.clone_model(model, input_tensors=image, clone_function=lambda layer: layer)
    heatmaps = last_stack(flat.outputs)
    if not with_decoder:
        return keras.Model(image, heatmaps, name="hourglass")
    coords, confidence = _decoder_layer_class()((h, w), stride, name="decoder")(heatmaps)
    return keras.Model(image, [coords, confidence], name="hourglass")


# ----------------------------------------------------------------------------- SavedModel


def serving_functions(model, with_decoder: bool):
    """(input signature [uint8 image [None, H, W, 3]], fn image -> {heatmaps} and, with the
    decoder, fn image -> {keypoints, confidence}; else None), for SavedModel and ONNX."""
    import tensorflow as tf
    (h, w), stride, _ = model_geometry(model)
    signature = [tf.TensorSpec([None, h, w, 3], tf.uint8, name=INPUT_NAME)]

    def heatmaps(image):
        return {HEATMAP_NAME: last_stack(model(tf.cast(image, tf.float32), training=False))}

    if not with_decoder:
        return signature, heatmaps, None
    from pipeline.codec import HeatmapCodec
    codec = HeatmapCodec((h, w), stride)

    def keypoints(image):
        coords, confidence = codec.decode(heatmaps(image)[HEATMAP_NAME], refine=DECODER_REFINE)
        return dict(zip(KEYPOINT_NAMES_OUT, (coords, confidence)))

    return signature, heatmaps, keypoints


def float_io(model, with_decoder: bool, heatmap_signature: Optional[str] = None) -> tuple[list, list]:
    """Metadata entries of a float model's input and outputs (batch -1 = any)."""
    (h, w), stride, k = model_geometry(model)

    def entry(name, shape, dtype, signature):
        e = {"name": name, "role": name, "shape": shape, "dtype": dtype, "scale": 0.0, "zero_point": 0}
        if signature:
            e["signature"] = signature
        return e

    inputs = [entry(INPUT_NAME, [-1, h, w, 3], "uint8", None)]
    inputs[0].pop("role")
    outputs = []
    if heatmap_signature or not with_decoder:
        outputs.append(entry(HEATMAP_NAME, [-1, h // stride, w // stride, k], "float32", heatmap_signature))
    if with_decoder:
        signature = "keypoints" if heatmap_signature else None
        outputs += [entry(KEYPOINT_NAMES_OUT[0], [-1, k, 2], "float32", signature),
                    entry(KEYPOINT_NAMES_OUT[1], [-1, k], "float32", signature)]
    return inputs, outputs


def export_saved_model(model, path: str, with_decoder: bool, card: Optional[ModelCard] = None) -> None:
    """SavedModel with signature `serving_default`: {image: uint8 [None, H, W, 3]} ->
    {heatmaps: float32}; with the decoder also `keypoints` -> {keypoints, confidence}; the
    card in `assets.extra`. Written to a temporary folder and renamed into place."""
    import keras
    signature, heatmaps, keypoints = serving_functions(model, with_decoder)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", heatmaps, input_signature=signature)
    if keypoints is not None:
        archive.add_endpoint("keypoints", keypoints, input_signature=signature)
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()):
        archive.write_out(tmp)
    if card is not None:
        embed_in_saved_model(tmp, card)
    replace_dir(tmp, path)


def onnx_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("tf2onnx") is not None


def export_onnx(model, path: str, with_decoder: bool, opset: int = ONNX_OPSET) -> None:
    """ONNX (float32) through tf2onnx: input `image` uint8 [N, H, W, 3]; output `heatmaps`, or
    with the decoder `keypoints` and `confidence`. An optional extra: needs tf2onnx installed."""
    if not onnx_available():
        raise ExportError("--format onnx needs tf2onnx (an optional extra, not installed): "
                          "pip install tf2onnx onnx (checked with tf2onnx 1.17.0, TF 2.21)")
    import tensorflow as tf
    import tf2onnx
    signature, heatmaps, keypoints = serving_functions(model, with_decoder)
    fn = tf.function(keypoints if with_decoder else heatmaps, input_signature=signature,
                     autograph=False)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    write_bytes_atomic(path, proto.SerializeToString())


def replace_dir(tmp: str, path: str) -> None:
    """Move folder `tmp` to `path`, replacing what was there (old folder renamed aside first)."""
    old = None
    if os.path.exists(path):
        old = f"{path.rstrip('/')}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- TFLite


def representative_dataset(images: np.ndarray) -> Callable:
    """Calibration generator: one uint8 crop [1, H, W, 3] at a time (batch 1)."""
    def generate():
        for image in images:
            yield [np.asarray(image, np.uint8)[None]]
    return generate


def tflite_converter(keras_model, quantization: str, calibration: Optional[Calibration],
                     float_output: bool):
    """A configured TFLiteConverter for one quantization mode."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if calibration is None or len(calibration.images) == 0:
            raise ExportError("--quantize int8 needs calibration crops: pass --representative "
                              "(a TFRecords folder) and --num_calibration > 0")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration.images)
        converter.inference_input_type = tf.uint8
        if float_output:
            # the decoder's float tail (coordinates) runs as float builtins after int8 heatmaps
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_output_type = tf.int8
    return converter


def convert_tflite(model, quantization: str, calibration: Optional[Calibration],
                   with_decoder: bool = False) -> bytes:
    """Flatbuffer bytes of the batch-1 wrapper of `model` in one quantization mode."""
    wrapper = wrap_model(model, with_decoder, batch_size=1)
    converter = tflite_converter(wrapper, quantization, calibration, float_output=with_decoder)
    with contextlib.redirect_stdout(io.StringIO()):
        data = converter.convert()
    return name_tensors(data, with_decoder)


def name_tensors(data: bytes, with_decoder: bool) -> bytes:
    """The flatbuffer with its input named `image`, its outputs `heatmaps` (or `keypoints` and
    `confidence`, told apart by rank) in the tensors and the signature, and the internal
    tensors' names dropped: the converter's fused debug names ("a/b/conv;a/b/bn;...") take
    3-8% of a file and mean nothing on a device. Unchanged if TF's flatbuffer tools are absent."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils
    except ImportError:
        return data
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    names = {graph.inputs[0]: INPUT_NAME}
    for index in graph.outputs:
        rank = len(graph.tensors[index].shape)
        names[index] = HEATMAP_NAME if not with_decoder else KEYPOINT_NAMES_OUT[0 if rank == 3 else 1]
    for index, tensor in enumerate(graph.tensors):
        tensor.name = names[index].encode() if index in names else None
    for signature in model.signatureDefs or []:
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            entry.name = names[entry.tensorIndex].encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tensor_details(details: list[dict]) -> list[dict]:
    """Name, shape, dtype and quantization (scale, zero point; 0/0 = not quantized)."""
    out = []
    for d in details:
        q = d.get("quantization_parameters", {})
        scales, zeros = np.asarray(q.get("scales", [])), np.asarray(q.get("zero_points", []))
        scale, zero = d["quantization"]
        entry = {"name": d["name"], "shape": [int(v) for v in d["shape"]],
                 "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zero)}
        if scales.size > 1:
            entry["per_channel_scales"] = scales.tolist()
            entry["per_channel_zero_points"] = zeros.tolist()
        out.append(entry)
    return out


def tflite_io(path_or_bytes) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) details of a TFLite model, read with the LiteRT interpreter."""
    from model.runner import open_interpreter
    interpreter = open_interpreter(path_or_bytes)
    return (tensor_details(interpreter.get_input_details()),
            tensor_details(interpreter.get_output_details()))


def label_outputs(outputs: list[dict], with_decoder: bool) -> list[dict]:
    """Give each output its role: heatmaps [1, h, w, K]; keypoints [1, K, 2]; confidence [1, K]."""
    for o in outputs:
        rank = len(o["shape"])
        o["role"] = HEATMAP_NAME if rank == 4 else (
            KEYPOINT_NAMES_OUT[0] if rank == 3 else KEYPOINT_NAMES_OUT[1])
    if with_decoder:
        outputs.sort(key=lambda o: KEYPOINT_NAMES_OUT.index(o["role"]))
    return outputs


# ----------------------------------------------------------------------------- driver


def write_bytes_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def file_size(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def variant_card(source: ModelCard, fmt: str, quantization: str, with_decoder: bool,
                 inputs: list[dict], outputs: list[dict], calibration: Optional[Calibration],
                 source_path: str) -> ModelCard:
    """The card of an exported file: the source's, plus format, quantization, batch, decoder
    and the input/output tensors with their dtype and quantization."""
    extra = dict(source.extra, source_model=os.path.abspath(source_path))
    if fmt == "tflite" and quantization == "int8" and calibration is not None:
        extra["calibration"] = calibration.describe()
    return source.replace(
        format=fmt, quantization=QUANT_NAMES[quantization] if fmt == "tflite" else "float32",
        batch=1 if fmt == "tflite" else None, decoder=DECODER_REFINE if with_decoder else None,
        inputs=tuple(inputs), outputs=tuple(outputs), extra=extra)


def export_model(model_path: str, output_dir: str, config: ExportConfig,
                 calibration: Optional[Calibration] = None, card: Optional[ModelCard] = None,
                 log: Callable[[str], None] = print, model=None) -> dict:
    """Write every requested variant, its card inside it and a json copy beside it, into
    `output_dir` plus `export_manifest.json`; returns the manifest. `card` replaces the
    source's (used when it carries none); `model` is the already loaded `model_path`, if any."""
    if model is None:
        model, source_card = load_source(model_path)
    else:
        source_card, _ = read_card(model_path)
    source_card = card or source_card
    if source_card is None:
        raise ExportError(f"{model_path} carries no model card (none inside it, no "
                          f"{metadata_path(model_path)} beside it): pass --representative (its "
                          f"records' keypoint definition is used)")
    num_keypoints = model_geometry(model)[2]
    if source_card.num_keypoints != num_keypoints:
        raise ExportError(f"{model_path} outputs {num_keypoints} heatmaps but its model card names "
                          f"{source_card.num_keypoints} keypoints")
    if config.needs_calibration and calibration is None:
        raise ExportError("--quantize int8 needs --representative (a TFRecords folder)")
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    variants = []

    def card_of(fmt, quantization, with_decoder, inputs, outputs):
        return variant_card(source_card, fmt, quantization, with_decoder, inputs, outputs,
                            calibration, model_path)

    def add(path, card, seconds):
        write_card_beside(path, card)
        entry = {"name": os.path.basename(path.rstrip("/")), "path": os.path.relpath(path, output_dir),
                 "format": card.format, "quantization": card.quantization,
                 "decoder": card.decoder is not None, "size_bytes": file_size(path),
                 "metadata": os.path.relpath(metadata_path(path), output_dir),
                 "seconds": round(seconds, 1)}
        variants.append(entry)
        log(f"wrote {path} ({entry['size_bytes'] / 1e6:.2f} MB, {entry['quantization']}"
            f"{', decoder' if entry['decoder'] else ''}, {seconds:.1f} s)")

    if "saved_model" in config.formats:
        path = os.path.join(output_dir, SAVED_MODEL_DIR)
        started = time.time()
        inputs, outputs = float_io(model, config.with_decoder, heatmap_signature="serving_default")
        card = card_of("saved_model", "none", config.with_decoder, inputs, outputs)
        export_saved_model(model, path, config.with_decoder, card)
        add(path, card, time.time() - started)

    if "onnx" in config.formats:
        path = os.path.join(output_dir, f"{stem}_onnx{'_decoder' if config.with_decoder else ''}.onnx")
        started = time.time()
        export_onnx(model, path, config.with_decoder)
        inputs, outputs = float_io(model, config.with_decoder)
        add(path, card_of("onnx", "none", config.with_decoder, inputs, outputs), time.time() - started)

    if "tflite" in config.formats:
        suffix = "_decoder" if config.with_decoder else ""
        for quantization in config.quantizations:
            started = time.time()
            data = convert_tflite(model, quantization, calibration, config.with_decoder)
            path = os.path.join(output_dir, f"{stem}_{QUANT_NAMES[quantization]}{suffix}.tflite")
            inputs, outputs = tflite_io(data)
            card = card_of("tflite", quantization, config.with_decoder, inputs,
                           label_outputs(outputs, config.with_decoder))
            write_bytes_atomic(path, embed_in_tflite(data, card))
            add(path, card, time.time() - started)

    manifest = merge_manifest(output_dir, model_path, variants, log)
    manifest.update({
        "source_model": os.path.abspath(model_path),
        "source_metadata": os.path.abspath(metadata_path(model_path)),
        "source_size_bytes": file_size(model_path),
    })
    if calibration is not None:
        manifest["calibration"] = calibration.describe()
    atomic_write_json(os.path.join(output_dir, MANIFEST_NAME), manifest)
    return manifest


def merge_manifest(output_dir: str, model_path: str, variants: list[dict],
                   log: Callable[[str], None]) -> dict:
    """The folder's manifest with `variants` added (same path: replaced). A manifest of
    another source model is replaced; a listed file that no longer exists is dropped."""
    import json
    path = os.path.join(output_dir, MANIFEST_NAME)
    old = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("source_model") != os.path.abspath(model_path):
            log(f"note: {path} described exports of {old.get('source_model')}; it now lists only "
                f"this run's models")
            old = {}
    new_paths = {v["path"] for v in variants}
    kept = [v for v in old.get("variants", []) if v["path"] not in new_paths
            and os.path.exists(os.path.join(output_dir, v["path"]))]
    manifest = {k: v for k, v in old.items() if k != "variants"}
    manifest["variants"] = kept + variants
    return manifest
