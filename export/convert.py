"""A trained `.keras` hourglass -> SavedModel, TFLite (and optionally ONNX) files.

Each file carries its model card (``model.card``: the source's keypoints, architecture, crop
and codec, plus format, quantization and tensors) inside it (SavedModel ``assets.extra``,
TFLite metadata; ONNX only beside it), with a readable json copy beside it.

Every exported model keeps only the LAST stack's heatmaps and takes the RGB crop's pixels as
they are (0-255); the model normalizes inside. TFLite models have batch 1.

Quantization modes (`QUANTIZATIONS`), TFLite only:
- ``none``: float32; input uint8 (cast to float inside).
- ``float16``: float16 weights, float32 compute; input uint8.
- ``dynamic``: int8 weights, float activations (dynamic-range); input uint8.
- ``int8``: full integer (TFLITE_BUILTINS_INT8), calibrated on eval crops of real records.
  Integer-only: input uint8 with scale 1, zero point 0 (raw pixels), first op an integer
  QUANTIZE (uint8 -> int8), no float tensor anywhere; output int8 heatmaps with a scale and
  zero point (in the model card).
- ``int16x8``: int16 activations, int8 weights (TF's 16x8 mode), calibrated alike; input int16
  with scale 1, zero point 0 (the pixels as int16), output int16 heatmaps; integer-only too.
  LiteRT runs it on its reference kernels (XNNPACK has no int16 path): slow on CPUs.
- ``mixed``: int8 with the layers of largest quantization error kept in float, chosen on the
  export's crops (``export.quantize``): TF's quantization debugger ranks the int8 layers, and
  the worst 0, 1, 2, 4, ... stay float until the PCK on labelled crops (the split's crops after
  the calibration ones) is within 0.5 points of the float model's. The card lists the layers.

The integer modes (int8, int16x8, mixed) convert ``integer_graph``: the same layers and trained
weights, float32 pixel input (which the converter makes the integer raw-pixel input). In int8
and mixed the mobile stem's 7x7 stride-2 depthwise convolution (depth multiplier 8 over the 3
RGB channels) is written as space_to_depth(2) + a 4x4 convolution over 12 channels holding
the same weights (the same outputs in float): XNNPACK's int8 kernel for the depthwise shape is
5-7x slower than its float one (``python -m benchmarks.int8_ops``). Cards of TFLite files say
``integer_only``, read from the file itself (no float tensor anywhere).

``with_decoder``: the TFLite models end in the codec's decoder
(``pipeline.codec.HeatmapCodec.decode``, 'quarter' refinement) and output ``keypoints``
float32 [1, K, 2] (crop-input pixels) and ``confidence`` float32 [1, K] (named
``*_decoder.tflite``; in the integer modes the heatmaps stay integer and the decoder's few ops
run in float, so such a file is not integer-only); the SavedModel keeps ``serving_default``
(heatmaps) and gets a second signature ``keypoints``.

ONNX (``--format onnx``, float32, any batch, same input and outputs as the SavedModel's
default signature, or the decoder's outputs) is an optional extra through tf2onnx, which is not
a dependency of the project: tf2onnx 1.17.0 with onnx 1.23 converts these models under
TF 2.21 / protobuf 7 and onnxruntime matches Keras within 1e-5.

Exporting again into the same folder (same source model) adds to its manifest, so heatmap and
decoder models can live side by side.

Converted from the model's inference function with its weights frozen into constants
(``keras_converter``): the same flatbuffer ops and outputs as ``TFLiteConverter.from_keras_model``
in a quarter of the time, because nothing is written as a SavedModel first. (The function with
its variables unfrozen fails during calibration, see ../shared/reference/stack-facts.md.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from typing import Callable, Optional

import numpy as np

from configs import atomic_write_bytes, atomic_write_json
from configs.files import atomic_path
from model.card import (
    ModelCard,
    embed_in_saved_model,
    embed_in_tflite,
    metadata_path,
    read_card,
    write_card_beside,
)

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int16x8", "mixed")
QUANT_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8",
               "int16x8": "int16x8", "mixed": "mixed"}
CALIBRATED = ("int8", "int16x8", "mixed")      # need --representative; convert integer_graph
MIXED_DEBUG_CROPS = 64                          # calibration crops the quantization debugger runs
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
        return "tflite" in self.formats and any(q in CALIBRATED for q in self.quantizations)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration crops (uint8 [N, H, W, 3]) and where they came from; ``selection``: the
    labelled crops (``export.records.Crops``) that ``--quantize mixed`` scores PCK on."""

    images: np.ndarray
    tfrecords: str = ""
    split: str = ""
    selection: Optional[object] = None
    selection_overlaps: bool = False     # selection crops are calibration crops too

    def describe(self) -> dict:
        out = {"tfrecords": os.path.abspath(self.tfrecords) if self.tfrecords else None,
               "split": self.split or None, "num_examples": int(len(self.images)),
               "parser": "eval (Parser.parse_eval), batch 1"}
        if self.selection is not None:
            out["selection_examples"] = int(len(self.selection.images))
            out["selection_overlaps_calibration"] = bool(self.selection_overlaps)
        return out


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


STEMS = ("space_to_depth", "dense", "depthwise")   # integer_graph's ways to write the mobile stem


def _dense_kernel(layer) -> np.ndarray:
    """The Conv2D kernel [k, k, C, C * m] computing a DepthwiseConv2D with depth multiplier m:
    output channel c * m + j reads input channel c only (block-diagonal, the trained weights)."""
    depthwise = layer.get_weights()[0]
    kh, kw, cin, mult = depthwise.shape
    kernel = np.zeros((kh, kw, cin, cin * mult), np.float32)
    for c in range(cin):
        kernel[:, :, c, c * mult:(c + 1) * mult] = depthwise[:, :, c, :]
    return kernel


def _space_to_depth_conv_class():
    import keras
    import tensorflow as tf

    class SpaceToDepthConv(keras.layers.Layer):
        """A k x k, stride-2, 'same' convolution (no bias) as space_to_depth(2) -> a
        ceil(k/2)^2 stride-1 'same' convolution over 4x the channels: the same outputs (see
        ``space_to_depth_fits``), in a shape XNNPACK's int8 kernels run well (a 3-channel 7x7
        convolution wastes most of their lanes), and no PAD op."""

        def __init__(self, kernel: np.ndarray, **kwargs):
            super().__init__(**kwargs)
            k, _, cin, cout = kernel.shape
            even = k + k % 2
            padded = np.zeros((even, even, cin, cout), np.float32)
            padded[:k, :k] = kernel
            # K'[a, b, (dy * 2 + dx) * C + c] = K[2a + dy, 2b + dx, c]: space_to_depth's order
            self.folded = (padded.reshape(even // 2, 2, even // 2, 2, cin, cout)
                           .transpose(0, 2, 1, 3, 4, 5).reshape(even // 2, even // 2, 4 * cin, cout))

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=self.folded.shape, initializer="zeros",
                                          trainable=False, name="kernel")
            self.kernel.assign(self.folded)

        def call(self, x):
            return tf.nn.conv2d(tf.nn.space_to_depth(x, 2), self.kernel, 1, "SAME")

        def compute_output_shape(self, shape):
            return (shape[0], shape[1] // 2, shape[2] // 2, self.folded.shape[-1])

    return SpaceToDepthConv


def space_to_depth_fits(layer) -> bool:
    """Whether a k x k stride-2 'same' convolution over an H x W input equals space_to_depth
    then a ceil(k/2)^2 'same' one: H and W even, and its padding before the image (pixels)
    twice the smaller convolution's (cells), e.g. 2 and 1 for k = 7."""
    _, h, w, _ = layer.input.shape
    k = int(layer.kernel_size[0])
    if (tuple(layer.strides) != (2, 2) or layer.padding != "same" or layer.kernel_size[1] != k
            or tuple(layer.dilation_rate) != (1, 1) or layer.use_bias or not h or not w):
        return False
    small = (k + k % 2) // 2
    return all(size % 2 == 0 and (k - 2) // 2 == 2 * ((small - 1) // 2) for size in (h, w))


def _stem_rewrite(stem: str):
    """clone_function of integer_graph: the DepthwiseConv2D with depth multiplier > 1 (the
    mobile stem) written as ``stem`` says; every other layer itself (shared, not copied)."""
    import keras

    def rewrite(layer):
        if (stem == "depthwise" or not isinstance(layer, keras.layers.DepthwiseConv2D)
                or layer.depth_multiplier == 1):
            return layer
        kernel = _dense_kernel(layer)
        if stem == "space_to_depth" and space_to_depth_fits(layer):
            return _space_to_depth_conv_class()(kernel, name=layer.name)
        conv = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=layer.strides,
                                   padding=layer.padding, dilation_rate=layer.dilation_rate,
                                   use_bias=layer.use_bias, name=layer.name)
        conv.build((None, None, None, kernel.shape[2]))
        conv.set_weights([kernel] + layer.get_weights()[1:])
        return conv

    return rewrite


def integer_graph(model, with_decoder: bool = False, batch_size: Optional[int] = 1,
                  stem: str = "space_to_depth"):
    """keras.Model for the integer modes: float32 ``image`` [B, H, W, 3] holding the pixel
    values 0-255 (the converter makes it an integer tensor of scale 1, zero point 0: the first
    op is then an integer QUANTIZE or the normalization's MUL, never a float CAST) -> last-stack
    heatmaps, or the decoder's outputs. The source's layers and trained weights, except the
    mobile stem (a 7x7 stride-2 depthwise convolution, depth multiplier 8 over RGB), written
    as ``stem`` (``STEMS``) says: ``space_to_depth`` (``SpaceToDepthConv``), ``dense`` (a
    Conv2D with a block-diagonal kernel) or ``depthwise`` (as trained; XNNPACK's int8 kernel
    for it is 5x slower than its float one). All three give the same float outputs."""
    import keras
    if stem not in STEMS:
        raise ExportError(f"stem {stem!r}: use one of {', '.join(STEMS)}")
    (h, w), stride, _ = model_geometry(model)
    first = next(layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer))
    if not isinstance(first, keras.layers.Rescaling):
        raise ExportError(f"model {model.name!r}: expected the hourglass's first layer to be "
                          f"Rescaling (RGB 0-255 -> [-1, 1]); got {type(first).__name__}")
    image = keras.Input(shape=(h, w, 3), batch_size=batch_size, dtype="float32", name=INPUT_NAME)
    flat = keras.models.clone_model(model, input_tensors=image, clone_function=_stem_rewrite(stem))
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
    card in `assets.extra`. It holds the weights and these functions only, not the Keras
    layers (Keras' ExportArchive saves those too: a 25% larger folder, ~1.4 s more to write on
    the quickstart model, the same outputs). Written to a temporary folder, renamed into place."""
    import tensorflow as tf
    signature, heatmaps, keypoints = serving_functions(model, with_decoder)
    module = tf.Module()
    module.model_variables = list(model.variables)
    module.heatmaps = tf.function(heatmaps, input_signature=signature)
    signatures = {"serving_default": module.heatmaps.get_concrete_function()}
    if keypoints is not None:
        module.keypoints = tf.function(keypoints, input_signature=signature)
        signatures["keypoints"] = module.keypoints.get_concrete_function()
    with atomic_path(path, keep_extension=False) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            tf.saved_model.save(module, tmp, signatures=signatures)
        if card is not None:
            embed_in_saved_model(tmp, card)


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
    atomic_write_bytes(path, proto.SerializeToString())


# ----------------------------------------------------------------------------- TFLite


def representative_dataset(images: np.ndarray) -> Callable:
    """Calibration generator for ``integer_graph``: one crop [1, H, W, 3] at a time (batch 1),
    its uint8 pixel values as float32."""
    def generate():
        for image in images:
            yield [np.asarray(image, np.float32)[None]]
    return generate


def frozen_call(keras_model):
    """`keras_model`'s inference call (training=False) as a concrete function with its weights
    frozen into constants: traced and frozen once, it serves every converter of that graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in keras_model.inputs]
    call = tf.function(lambda *inputs: keras_model(list(inputs) if len(inputs) > 1 else inputs[0],
                                                   training=False))
    return convert_variables_to_constants_v2(call.get_concrete_function(*specs))


def keras_converter(keras_model=None, frozen=None):
    """A TFLiteConverter of `keras_model`'s ``frozen_call``, or of `frozen`, one already made.
    ``from_keras_model`` gives the same ops and outputs but first writes and reads back a
    SavedModel, which takes 3/4 of a conversion; unfrozen, the same function fails in
    calibration (READ_VARIABLE)."""
    import tensorflow as tf
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [frozen if frozen is not None else frozen_call(keras_model)])


class ExportGraphs:
    """The graphs one model is converted from, each built, traced and frozen once: the float
    modes share ``wrap_model``'s, int8 and mixed ``integer_graph``'s with the space-to-depth
    stem, int16x8 its own (depthwise stem); with and without the decoder apart."""

    def __init__(self, model):
        self.model = model
        self._built = {}

    def graph(self, quantization: str, with_decoder: bool):
        """(keras.Model, its ``frozen_call``) converted for `quantization` (batch 1)."""
        stem = None
        if quantization in CALIBRATED:
            # 16x8 has no SPACE_TO_DEPTH; its reference kernels gain nothing from it
            stem = "depthwise" if quantization == "int16x8" else "space_to_depth"
        key = (stem, with_decoder)
        if key not in self._built:
            graph = (integer_graph(self.model, with_decoder, batch_size=1, stem=stem) if stem
                     else wrap_model(self.model, with_decoder, batch_size=1))
            self._built[key] = graph, frozen_call(graph)
        return self._built[key]

    def converter(self, quantization: str, calibration: Optional[Calibration], with_decoder: bool):
        """``tflite_converter`` of the graph for `quantization`."""
        graph, frozen = self.graph(quantization, with_decoder)
        return tflite_converter(graph, quantization, calibration, with_decoder, frozen)


def tflite_converter(keras_model, quantization: str, calibration: Optional[Calibration],
                     float_output: bool, frozen=None):
    """A configured TFLiteConverter for one quantization mode (``mixed``: its int8 converter
    with float builtins allowed, for ``export.quantize.rank_layers``); `frozen`: the model's
    ``frozen_call``, when already made."""
    import tensorflow as tf
    converter = keras_converter(keras_model, frozen)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization in CALIBRATED:
        if calibration is None or len(calibration.images) == 0:
            raise ExportError(f"--quantize {quantization} needs calibration crops: pass "
                              f"--representative (a TFRecords folder) and --num_calibration > 0")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration.images)
        ops = tf.lite.OpsSet
        integer_ops = (ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                       if quantization == "int16x8" else ops.TFLITE_BUILTINS_INT8)
        # the decoder's float tail (coordinates) and mixed's float layers run as float builtins
        floats = float_output or quantization == "mixed"
        converter.target_spec.supported_ops = [integer_ops] + ([ops.TFLITE_BUILTINS] if floats else [])
        converter.inference_input_type = tf.int16 if quantization == "int16x8" else tf.uint8
        if not float_output:
            converter.inference_output_type = tf.int16 if quantization == "int16x8" else tf.int8
    return converter


def convert_tflite(model, quantization: str, calibration: Optional[Calibration],
                   with_decoder: bool = False, card: Optional[ModelCard] = None,
                   log: Callable[[str], None] = print, graphs: Optional[ExportGraphs] = None) -> bytes:
    """Flatbuffer bytes of `model` (batch 1) in one quantization mode: ``wrap_model`` for the
    float modes, ``integer_graph`` (raw-pixel integer input) for the calibrated ones. ``mixed``
    is ``convert_mixed`` (needs ``card`` and ``calibration.selection``) without its report.
    `graphs`: the ``ExportGraphs`` of `model` shared by several calls."""
    graphs = graphs or ExportGraphs(model)
    if quantization == "mixed":
        return convert_mixed(model, calibration, card, with_decoder, log, graphs=graphs)[0]
    converter = graphs.converter(quantization, calibration, with_decoder)
    with contextlib.redirect_stdout(io.StringIO()):
        data = converter.convert()
    if quantization in CALIBRATED:
        from export.quantize import set_raw_pixel_input
        data = set_raw_pixel_input(data)
    return name_tensors(data, with_decoder)


def selection_pck(outputs: list[np.ndarray], crops, card: ModelCard, refine: str) -> float:
    """PCK (model.metrics.pck_counts, the card's crop threshold) of heatmaps [N, h, w, K]
    decoded with `refine`, or of a decoder's keypoints [N, K, 2], on labelled crops."""
    from model.metrics import pck_counts, pck_threshold_px
    coords = outputs[0]
    if coords.ndim == 4:
        coords = np.asarray(card.codec().decode(coords, refine=refine)[0])
    correct, total = pck_counts(coords, crops.keypoints, crops.weights,
                                pck_threshold_px(card.input_size, card.output_stride))
    return float(correct.sum() / max(total.sum(), 1.0))


def convert_mixed(model, calibration: Optional[Calibration], card: Optional[ModelCard],
                  with_decoder: bool = False, log: Callable[[str], None] = print,
                  keep: Optional[int] = None, graphs: Optional[ExportGraphs] = None
                  ) -> tuple[bytes, dict]:
    """(flatbuffer, report) of ``--quantize mixed``: the int8 layers ranked by the quantization
    debugger on the calibration crops (at most ``MIXED_DEBUG_CROPS``), the worst kept in float
    until the PCK on ``calibration.selection`` is within 0.5 points of the float Keras model's
    (``export.quantize.select_float_layers``). ``keep``: exactly that many worst layers in
    float, no PCK needed (benchmarks of untrained models)."""
    from export.quantize import (
        MIXED_MAX_PCK_DROP,
        float_layer_names,
        quantize_calibrated,
        rank_layers,
        run_tflite,
        select_float_layers,
    )
    if keep is None and (calibration is None or calibration.selection is None or card is None):
        raise ExportError("--quantize mixed needs labelled crops to score PCK on: pass "
                          "--representative (a TFRecords folder)")
    graphs = graphs or ExportGraphs(model)
    graph, _ = graphs.graph("mixed", with_decoder)
    converter = graphs.converter("mixed", calibration, with_decoder)
    debug = representative_dataset(calibration.images[:MIXED_DEBUG_CROPS])
    calibrated, ranked = rank_layers(converter, debug, log)
    if keep is not None:
        data = quantize_calibrated(calibrated, [r["tensor"] for r in ranked[:keep]], with_decoder)
        report = {"float_layers": ranked[:keep], "ranked_layers": len(ranked)}
    else:
        refine = DECODER_REFINE if with_decoder else card.refine
        crops = calibration.selection
        points = int((crops.weights > 0).sum())
        if points * MIXED_MAX_PCK_DROP < 1:
            log(f"note: --quantize mixed scores {points} labelled keypoints: one keypoint is "
                f"{100 / max(points, 1):.2f} PCK points, more than the 0.5 allowed; the choice is "
                f"at the mercy of single keypoints (more --num_selection crops steady it)")
        float_pck = selection_pck([batched_heatmaps(model, crops.images)], crops, card, refine)
        data, report = select_float_layers(
            calibrated, ranked, lambda d: selection_pck(run_tflite(d, crops.images), crops, card, refine),
            float_pck, with_decoder, log=log)
        report.update(selection_examples=int(len(crops.images)), selection_keypoints=points,
                      refine=refine)
    report["float_layers"] = float_layer_names(report["float_layers"],
                                               [layer.name for layer in graph.layers])
    report["debugger_crops"] = int(min(len(calibration.images), MIXED_DEBUG_CROPS))
    return name_tensors(data, with_decoder), report


def batched_heatmaps(keras_model, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """The source model's last-stack heatmaps of uint8 crops, through ``KerasRunner`` (one
    traced call for any batch size; eager Keras takes ~4x as long on 200 crops)."""
    from model.runner import KerasRunner
    runner = KerasRunner(None, model=keras_model)
    return np.concatenate([runner(images[i:i + batch]) for i in range(0, len(images), batch)])


def name_tensors(data: bytes, with_decoder: bool) -> bytes:
    """The flatbuffer with its input named `image`, its outputs `heatmaps` (or `keypoints` and
    `confidence`, told apart by rank) in the tensors and the signature, and the internal
    tensors' names dropped: the converter's fused debug names ("a/b/conv;a/b/bn;...") take
    3-8% of a file and mean nothing on a device. Unchanged if TF's flatbuffer tools are absent."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils  # noqa: F401 - rename_io needs it
    except ImportError:
        return data

    def io_names(graph) -> dict:
        names = {graph.inputs[0]: INPUT_NAME}
        for index in graph.outputs:
            rank = len(graph.tensors[index].shape)
            names[index] = HEATMAP_NAME if not with_decoder else KEYPOINT_NAMES_OUT[0 if rank == 3 else 1]
        return names

    return rename_io(data, io_names)


def rename_io(data: bytes, io_names) -> bytes:
    """The flatbuffer with tensor ``i`` of ``io_names(graph)`` ({index: name} for the inputs
    and outputs of the first subgraph) named so in the tensors and the signatures, and every
    other tensor's name dropped. A file without signatures (``keras_converter``'s) gets
    ``serving_default`` over the first subgraph, its entries, inputs and outputs by name, as
    a SavedModel's."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    names = io_names(graph)
    for index, tensor in enumerate(graph.tensors):
        tensor.name = names[index].encode() if index in names else None
    if not model.signatureDefs:
        graph.inputs = sorted(graph.inputs, key=lambda i: names[i])
        graph.outputs = sorted(graph.outputs, key=lambda i: names[i])

        def tensor_maps(indices):
            return [schema.TensorMapT(name=names[i].encode(), tensorIndex=int(i)) for i in indices]
        model.signatureDefs = [schema.SignatureDefT(
            inputs=tensor_maps(graph.inputs), outputs=tensor_maps(graph.outputs),
            signatureKey=b"serving_default", subgraphIndex=0)]
    for signature in model.signatureDefs:
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


def file_size(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def variant_card(source: ModelCard, fmt: str, quantization: str, with_decoder: bool,
                 inputs: list[dict], outputs: list[dict], calibration: Optional[Calibration],
                 source_path: str, facts: Optional[dict] = None,
                 mixed: Optional[dict] = None) -> ModelCard:
    """The card of an exported file: the source's, plus format, quantization, batch, decoder
    and the input/output tensors with their dtype and quantization; for a TFLite file read by
    ``export.quantize.tflite_facts`` also ``integer_only`` and the activation types; for
    ``mixed`` the layers kept in float and how they were chosen."""
    extra = dict(source.extra, source_model=os.path.abspath(source_path))
    if fmt == "tflite" and quantization in CALIBRATED and calibration is not None:
        extra["calibration"] = calibration.describe()
    if facts is not None:
        extra["integer_only"] = bool(facts["integer_only"])
        extra["activation_types"] = sorted(t.lower() for t in facts["activation_types"])
    if mixed is not None:
        extra["float_layers"] = list(mixed["float_layers"])
        extra["mixed"] = {k: v for k, v in mixed.items() if k != "float_layers"}
    normalization = source.input_normalization
    if fmt == "tflite" and quantization == "int16x8":
        normalization = ("RGB 0-255 crop [1, H, W, 3] as int16 (scale 1, zero point 0: the pixel "
                         "values as they are); the model maps it to [-1, 1]")
    return source.replace(
        format=fmt, quantization=QUANT_NAMES[quantization] if fmt == "tflite" else "float32",
        batch=1 if fmt == "tflite" else None, decoder=DECODER_REFINE if with_decoder else None,
        inputs=tuple(inputs), outputs=tuple(outputs), input_normalization=normalization,
        extra=extra)


def source_with_card(model_path: str, card: Optional[ModelCard] = None, model=None):
    """(model, card) to export: `model` or the loaded `model_path`, and `card` or the one the
    file carries; ExportError when there is neither."""
    if model is None:
        model, source_card = load_source(model_path)
    else:
        source_card, _ = read_card(model_path)
    source_card = card or source_card
    if source_card is None:
        raise ExportError(f"{model_path} carries no model card (none inside it, no "
                          f"{metadata_path(model_path)} beside it): pass --representative (its "
                          f"records' keypoint definition is used)")
    return model, source_card


def export_model(model_path: str, output_dir: str, config: ExportConfig,
                 calibration: Optional[Calibration] = None, card: Optional[ModelCard] = None,
                 log: Callable[[str], None] = print, model=None) -> dict:
    """Write every requested variant, its card inside it and a json copy beside it, into
    `output_dir` plus `export_manifest.json`; returns the manifest. `card` replaces the
    source's (used when it carries none); `model` is the already loaded `model_path`, if any."""
    model, source_card = source_with_card(model_path, card, model)
    num_keypoints = model_geometry(model)[2]
    if source_card.num_keypoints != num_keypoints:
        raise ExportError(f"{model_path} outputs {num_keypoints} heatmaps but its model card names "
                          f"{source_card.num_keypoints} keypoints")
    if config.needs_calibration and calibration is None:
        raise ExportError(f"--quantize {' '.join(q for q in config.quantizations if q in CALIBRATED)} "
                          f"needs --representative (a TFRecords folder)")
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    variants = []

    def card_of(fmt, quantization, with_decoder, inputs, outputs, facts=None, mixed=None):
        return variant_card(source_card, fmt, quantization, with_decoder, inputs, outputs,
                            calibration, model_path, facts, mixed)

    def add(path, card, seconds):
        write_card_beside(path, card)
        entry = {"name": os.path.basename(path.rstrip("/")), "path": os.path.relpath(path, output_dir),
                 "format": card.format, "quantization": card.quantization,
                 "decoder": card.decoder is not None, "size_bytes": file_size(path),
                 "metadata": os.path.relpath(metadata_path(path), output_dir),
                 "seconds": round(seconds, 1)}
        notes = ""
        if "integer_only" in card.extra:
            entry["integer_only"] = card.extra["integer_only"]
            notes += ", integer-only" if entry["integer_only"] else ""
        if "float_layers" in card.extra:
            entry["float_layers"] = len(card.extra["float_layers"])
            notes += f", {entry['float_layers']} layer(s) in float"
        variants.append(entry)
        log(f"wrote {path} ({entry['size_bytes'] / 1e6:.2f} MB, {entry['quantization']}"
            f"{', decoder' if entry['decoder'] else ''}{notes}, {seconds:.1f} s)")

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
        from export.quantize import tflite_facts
        graphs = ExportGraphs(model)
        for quantization in config.quantizations:
            started = time.time()
            mixed = None
            if quantization == "mixed":
                data, mixed = convert_mixed(model, calibration, source_card, config.with_decoder, log,
                                            graphs=graphs)
            else:
                data = convert_tflite(model, quantization, calibration, config.with_decoder, graphs=graphs)
            path = os.path.join(output_dir, f"{stem}_{QUANT_NAMES[quantization]}{suffix}.tflite")
            inputs, outputs = tflite_io(data)
            card = card_of("tflite", quantization, config.with_decoder, inputs,
                           label_outputs(outputs, config.with_decoder), tflite_facts(data), mixed)
            atomic_write_bytes(path, embed_in_tflite(data, card))
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
