"""One TFLite file from a camera frame to keypoints in frame pixels (``--full_pipeline``).

    python -m export --model_path logs/000/final.keras --output_dir exported \\
        --quantize none float16 int8 --representative records/ --full_pipeline --frame_size 480x640

writes ``<stem>_<float32|float16|dynamic|int8>_pipeline.tflite``:

- inputs ``image`` uint8 [1, H, W, 3] (the RGB frame as it comes; a smaller frame is padded at
  its bottom and right, which leaves pixel coordinates unchanged) and ``box`` float32 [1, 4]
  (x, y, w, h of the subject in frame pixels; the whole frame ``[0, 0, w, h]`` without one);
- outputs ``keypoints`` float32 [1, K, 2] (frame pixels, ``pipeline.coords`` convention) and
  ``confidence`` float32 [1, K] (heatmap maximum).

Inside, as evaluation does it (``pipeline.parser.Parser.parse_eval``, ``model.predictor``):
the crop of the box (centre x + w / 2, side max(w, h) = 200 · scale; a ``frame`` crop model
letterboxes the box's region), sampled bit for bit as eval samples it (``box_crop_matrix``,
``sample_crop``: ``affine.crop_matrix``'s float64 steps in float32 pairs, then
``tf.image.crop_and_resize``'s float32 arithmetic by four GATHERs, 0 past the frame, rounded
like ``affine.to_uint8``), the network's last stack, the codec's decoder with the card's
refinement (``HeatmapCodec.decode``, DARK by default) and the inverse affine. Builtin TFLite
ops only (``check_builtin_ops``). A record's crop is named exactly by ``record_box``.

The network is the one ``python -m export`` converts for that mode (``wrap_model``; for int8
``integer_graph``, calibrated on the same eval crops), so on the crop it samples the pipeline
gives exactly what that crop model gives through ``run.py eval``. The geometry (affine,
sampling, decoding, inverse affine) is small and stays float32 in every file: float16 halves
only the network's weights (``half_network_weights``), int8 quantizes only the network
(``quantize_network``), and ``reduced_geometry`` refuses a file where any geometry tensor came
out float16 or quantized, so coordinates never pass through an 8-bit or half-precision grid.
The card inside each file says so (``pipeline`` entry).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Optional, Sequence

import numpy as np

from export.convert import ExportError, frozen_call, keras_converter

SUFFIX = "_pipeline.tflite"
INPUT_NAMES = ("image", "box")
OUTPUT_NAMES = ("keypoints", "confidence")
NETWORK_SCOPE = "network"        # layer name of the network inside the pipeline model
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")     # of the network; geometry stays float
NETWORK_QUANTIZATION = {"none": "float32", "float16": "float16 weights",
                        "dynamic": "int8 weights, float activations",
                        "int8": "int8 weights and activations"}
GEOMETRY = ("float32: the crop affine, bilinear sampling, heatmap decoding and inverse affine "
            "run in float32 in every variant; only the network is quantized (int8: integer "
            "network, float geometry)")


# ----------------------------------------------------------------------------- flags


def parse_frame_size(text: str) -> tuple[int, int]:
    """"480x640" -> (480, 640) (height x width); ExportError naming --frame_size otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match or min(int(match.group(1)), int(match.group(2))) < 1:
        raise ExportError(f"--frame_size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. "
                          f"--frame_size 480x640 for a 640-wide, 480-high camera frame")
    return int(match.group(1)), int(match.group(2))


def check_pipeline_args(args) -> None:
    """Cheap checks of --full_pipeline / --frame_size against the other flags."""
    if not args.full_pipeline:
        if args.frame_size is not None:
            raise ExportError(f"--frame_size {args.frame_size} only applies to --full_pipeline: add "
                              f"--full_pipeline, or drop --frame_size")
        return
    if args.frame_size is None:
        raise ExportError("--full_pipeline needs --frame_size HxW, the largest frame the app feeds "
                          "(e.g. --frame_size 480x640; smaller frames are padded)")
    parse_frame_size(args.frame_size)
    if list(args.format) != ["tflite"]:
        raise ExportError(f"--full_pipeline writes TFLite files only, not --format "
                          f"{' '.join(args.format)}: drop --format, or export the others in a "
                          f"separate run")
    if args.with_decoder:
        raise ExportError("--full_pipeline always ends in the decoder (keypoints in frame pixels): "
                          "drop --with_decoder")
    bad = [q for q in args.quantize if q not in QUANTIZATIONS]
    if bad:
        raise ExportError(f"--full_pipeline --quantize {' '.join(bad)}: the pipeline is written with "
                          f"{', '.join(QUANTIZATIONS)}")


# ----------------------------------------------------------------------------- graph


def box_crop_matrix(box, card):
    """float32 [3, 3] frame px -> crop px of ``box`` (x, y, w, h) [4]: bit for bit the matrix
    ``Parser.parse_eval`` gives the crop of the square of side max(w, h) = 200 · scale
    centred on the box's centre (``coords.box_to_center_scale``; ``affine.crop_matrix`` takes
    that square with a float32 corner, which a record's box is, ``record_box``); for a
    ``frame`` model, of the box's region letterboxed (``affine.frame_center_scale``: the whole
    frame gives the eval crop). ``affine.crop_matrix`` rounds the exact matrix to float32
    after float64 steps; here the steps are float32 pairs (``_Pair``), rounded once: the same
    float32 numbers."""
    import tensorflow as tf

    from pipeline import affine, coords
    xy, wh = box[:2], box[2:]
    if card.crop_mode == "frame":
        center, scale = affine.frame_center_scale(tf.stack([wh[1], wh[0]]), card.padding,
                                                  card.input_size, zero=_runtime_zero(box[2]))
        side = coords.PIXELS_PER_SCALE * scale                       # float32, as eval
        corner = xy + center - side / 2.0                            # eval's float32 square
        centers = [_Pair.exact_sum(corner[i], side / 2.0) for i in range(2)]
    else:   # the box's centre, exactly
        side = tf.reduce_max(wh)
        centers = [_Pair.exact_sum(xy[i], wh[i] / 2.0) for i in range(2)]
    in_h, in_w = (float(v) for v in card.input_size)
    span = _Pair.product(card.padding, side).rounded()          # the padded side, float32
    shortest = min(in_h, in_w)

    def shift(half, c):     # (half · span - shortest · c) / span, its products exact
        high = _Pair.sum(_Pair.exact_product(half, span), _Pair.exact_product(-shortest, c.hi))
        return _Pair.sum(high, _Pair.exact_product(-shortest, c.lo)).divide(span).rounded()

    zoom, zero, one = shortest / span, tf.constant(0.0), tf.constant(1.0)
    tx, ty = shift(in_w / 2.0, centers[0]), shift(in_h / 2.0, centers[1])
    return tf.reshape(tf.stack([zoom, zero, tx, zero, zoom, ty, zero, zero, one]), [3, 3])


def record_box(center, scale) -> np.ndarray:
    """The float32 box (x, y, w, h) whose crop (``box_crop_matrix``) is the one
    ``Parser.parse_eval`` takes for a record's ``center`` and ``scale``: the square of side
    200 · scale with ``affine.crop_matrix``'s float32 corner."""
    from pipeline import coords
    side = np.float32(coords.PIXELS_PER_SCALE * np.float64(np.float32(scale)))
    corner = (np.asarray(center, np.float32).astype(np.float64) - np.float64(side) / 2.0).astype(np.float32)
    return np.array([corner[0], corner[1], side, side], np.float32)


class _Pair:
    """A float32 pair hi + lo holding ~48 bits (double-float arithmetic, Dekker's products
    without FMA), so that float64 results rounded to float32 come out of float32 builtin ops
    (TFLite has no float64). Inputs are float32 scalars or constants."""

    SPLIT = 4097.0    # 2**12 + 1: splits a float32 into two 12-bit halves

    def __init__(self, hi, lo):
        self.hi, self.lo = hi, lo

    @staticmethod
    def constant(value: float) -> "_Pair":
        hi = np.float32(value)
        return _Pair(float(hi), float(np.float32(value - float(hi))))

    @staticmethod
    def _split(a):
        t = a * _Pair.SPLIT
        hi = t - (t - a)
        return hi, a - hi

    @staticmethod
    def exact_product(a, b) -> "_Pair":
        """a · b exactly (float32 a, b)."""
        a, b = _float32(a), _float32(b)
        p = a * b
        ah, al = _Pair._split(a)
        bh, bl = _Pair._split(b)
        return _Pair(p, ((ah * bh - p) + ah * bl + al * bh) + al * bl)

    @staticmethod
    def exact_sum(a, b) -> "_Pair":
        """a + b exactly (float32 a, b)."""
        a, b = _float32(a), _float32(b)
        s = a + b
        v = s - a
        return _Pair(s, (a - (s - v)) + (b - v))

    @staticmethod
    def product(constant: float, b) -> "_Pair":
        """A Python float times a float32 tensor."""
        c = _Pair.constant(constant)
        p = _Pair.exact_product(c.hi, b)
        return _Pair.normal(p.hi, p.lo + c.lo * b)

    @staticmethod
    def sum(first: "_Pair", second: "_Pair") -> "_Pair":
        """first + second, accurate even where they nearly cancel."""
        high, low = _Pair.exact_sum(first.hi, second.hi), _Pair.exact_sum(first.lo, second.lo)
        top = _Pair.exact_sum(high.hi, low.hi)
        return _Pair.normal(top.hi, (high.lo + low.lo) + top.lo)

    @staticmethod
    def normal(hi, lo) -> "_Pair":
        """The pair with hi = hi + lo rounded (|hi| >= |lo|)."""
        s = hi + lo
        return _Pair(s, lo - (s - hi))

    def rounded(self):
        """The float32 nearest the pair's value."""
        return self.hi + self.lo

    def add(self, b) -> "_Pair":
        """Pair + float32 b."""
        s = _Pair.exact_sum(self.hi, b)
        return _Pair.normal(s.hi, s.lo + self.lo)

    def divide(self, d) -> "_Pair":
        """Pair / d, d a pair or a float32 (one correction of the float32 quotient)."""
        d = d if isinstance(d, _Pair) else _Pair(d, 0.0)
        q = self.hi / d.hi
        p = _Pair.exact_product(q, d.hi)
        return _Pair.normal(q, ((((self.hi - p.hi) - p.lo) + self.lo) - q * d.lo) / d.hi)

    def floor(self):
        """floor(hi + lo) (float32) of a normal pair."""
        import tensorflow as tf
        down = tf.floor(self.hi)
        return down - tf.cast((self.hi == down) & (self.lo < 0.0), down.dtype)


def _float32(value):
    """A float32 tensor of ``value`` (Python numbers too: the pair arithmetic is float32's)."""
    import tensorflow as tf
    return tf.convert_to_tensor(value, tf.float32)


def _runtime_zero(tensor):
    """A float32 0 that TFLite's converter cannot fold: added to a constant divisor, it keeps
    the division (the converter would multiply by the rounded reciprocal, another rounding)."""
    import tensorflow as tf
    return tf.minimum(tf.abs(tensor), 0.0)


def invert_affine(matrix):
    """Inverse of an affine ``matrix`` [3, 3] in float32 builtin ops (TFLite has no matrix
    inverse; ``pipeline.affine.invert`` is its float64 twin)."""
    import tensorflow as tf
    a, b, tx = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    c, d, ty = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return tf.reshape(tf.stack([ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty),
                                0.0, 0.0, 1.0]), [3, 3])


def _axis_samples(zoom, shift, count: int, length: int):
    """One axis of ``sample_crop`` (zoom and shift of the crop matrix, ``count`` crop pixels, a
    frame ``length`` px long): the frame pixels each crop pixel blends (int32 [count] twice),
    whether each may be read (bool [count] twice), the blend weight (float32 [count]) and
    whether the sample is inside the window at all (bool [count]).

    Exactly ``affine.crop_window`` + ``resize_window``: the window's first pixel ``start``
    (one before the first sample, clipped to 0) and its end unclipped by the frame; its
    float64 box coordinates (sample position + 1 - start) / (window + 1) rounded to float32,
    here from float32 pairs; then ``tf.image.crop_and_resize``'s float32 arithmetic on the
    window with its one-pixel border."""
    import tensorflow as tf
    # pixel index of the first and last sample: ((j + 0.5) - shift) / zoom - 0.5
    first = _Pair.exact_sum(tf.constant(0.5), -shift).divide(zoom).add(-0.5)
    last = _Pair.exact_sum(tf.constant(count - 0.5), -shift).divide(zoom).add(-0.5)
    start = tf.clip_by_value(first.floor() - 1.0, 0.0, length - 1.0)
    end = tf.maximum(last.floor() + 3.0, start + 1.0)
    scale = end - start + 1.0                                # padded window size - 1
    top = first.add(1.0 - start).divide(scale).rounded()      # crop_and_resize's box
    bottom = last.add(1.0 - start).divide(scale).rounded()
    step = ((bottom - top) * scale) / (float(count - 1) + _runtime_zero(zoom))
    position = top * scale + tf.range(count, dtype=tf.float32) * step
    inside = (position >= 0.0) & (position <= scale)
    low, high = tf.floor(position), tf.math.ceil(position)

    def pixel(index):    # padded window index -> frame pixel, readable when on the window
        frame = index - 1.0 + start
        ok = (index >= 1.0) & (index <= scale - 1.0) & (frame >= 0.0) & (frame <= length - 1.0)
        return tf.cast(tf.clip_by_value(frame, 0.0, length - 1.0), tf.int32), ok

    (low_px, low_ok), (high_px, high_ok) = pixel(low), pixel(high)
    return low_px, high_px, low_ok, high_ok, position - low, inside


def sample_crop(image, matrix, output_size: Sequence[int]):
    """float32 [h, w, C] crop (0..255 integers) of ``image`` [H, W, C] or [1, H, W, C] (uint8)
    for an axis-aligned crop ``matrix`` (frame px -> crop px, ``box_crop_matrix``): bit for
    bit the pixels of ``Parser.parse_eval`` (``affine.crop_window`` then ``to_uint8``) on
    the frame the image holds, wherever in the frame it ends, since past its end the frame
    is 0 like eval's fill (``_axis_samples``). Four GATHERs from the flattened frame
    (reshaped whole: a slice of the batch would copy it, 14 ms for 640x640 in LiteRT)."""
    import tensorflow as tf
    out_h, out_w = int(output_size[0]), int(output_size[1])
    height, width, channels = (int(v) for v in image.shape[-3:])
    rows = _axis_samples(matrix[1, 1], matrix[1, 2], out_h, height)
    cols = _axis_samples(matrix[0, 0], matrix[0, 2], out_w, width)
    pixels = tf.reshape(image, [height * width, channels])

    def read(r, c):
        index = rows[r][:, tf.newaxis] * width + cols[c][tf.newaxis, :]
        ok = rows[r + 2][:, tf.newaxis] & cols[c + 2][tf.newaxis, :]
        return tf.cast(tf.gather(pixels, index), tf.float32) * tf.cast(ok, tf.float32)[..., tf.newaxis]

    x_weight, y_weight = cols[4][tf.newaxis, :, tf.newaxis], rows[4][:, tf.newaxis, tf.newaxis]
    top_left, top_right, bottom_left, bottom_right = read(0, 0), read(0, 1), read(1, 0), read(1, 1)
    top = top_left + (top_right - top_left) * x_weight            # crop_and_resize's blend
    bottom = bottom_left + (bottom_right - bottom_left) * x_weight
    value = top + (bottom - top) * y_weight
    value = value * tf.cast(rows[5][:, tf.newaxis] & cols[5][tf.newaxis, :], tf.float32)[..., tf.newaxis]
    return tf.floor(tf.clip_by_value(value, 0.0, 255.0) + 0.5)    # affine.to_uint8's rounding


def _layers():
    import keras

    class CropLayer(keras.layers.Layer):
        """(frame uint8 [1, H, W, 3], box [1, 4]) -> (crop float32 [1, h, w, 3] holding
        0..255 integers, crop px -> frame px matrix [1, 3, 3])."""

        def __init__(self, card, **kwargs):
            super().__init__(**kwargs)
            self.card = card

        def call(self, image, box):
            matrix = box_crop_matrix(box[0], self.card)
            crop = sample_crop(image, matrix, self.card.input_size)
            return crop[None], invert_affine(matrix)[None]

        def compute_output_shape(self, image_shape, box_shape):
            h, w = self.card.input_size
            return (1, h, w, 3), (1, 3, 3)

    class ToFrameLayer(keras.layers.Layer):
        """(crop px [1, K, 2], crop px -> frame px matrix [1, 3, 3]) -> frame px [1, K, 2]."""

        def call(self, points, inverse):
            from pipeline import affine
            return affine.transform_points(inverse, points)

        def compute_output_shape(self, points_shape, inverse_shape):
            return points_shape

    return CropLayer, ToFrameLayer


def build_pipeline(model, card, frame_size: Sequence[int], integer: bool = False):
    """keras.Model (batch 1): ``image`` uint8 [1, H, W, 3], ``box`` float32 [1, 4] ->
    [``keypoints`` [1, K, 2] frame px, ``confidence`` [1, K]] (module docstring). The network
    is the one ``python -m export`` converts: ``wrap_model`` (uint8 crop), or with ``integer``
    ``integer_graph`` (the crop's 0-255 values in float, the int8 modes' stem)."""
    import keras

    from export.convert import _decoder_layer_class, integer_graph, model_geometry, wrap_model
    (h, w), stride, _ = model_geometry(model)
    if (h, w) != tuple(card.input_size):
        raise ExportError(f"model {model.name!r} takes {h}x{w} crops but its card says "
                          f"{card.input_size[0]}x{card.input_size[1]}")
    CropLayer, ToFrameLayer = _layers()
    frame_h, frame_w = (int(v) for v in frame_size)
    image = keras.Input(shape=(frame_h, frame_w, 3), batch_size=1, dtype="uint8", name=INPUT_NAMES[0])
    box = keras.Input(shape=(4,), batch_size=1, dtype="float32", name=INPUT_NAMES[1])
    crop, inverse = CropLayer(card, name="crop")(image, box)
    if integer:
        flat = integer_graph(model, batch_size=1)
    else:
        flat = wrap_model(model, batch_size=1)
        crop = keras.ops.cast(crop, "uint8")
    network = keras.Model(flat.inputs[0], flat.outputs[0], name=NETWORK_SCOPE)
    heatmaps = network(crop)
    coords, confidence = _decoder_layer_class()((h, w), stride, refine=card.refine,
                                                name="decoder")(heatmaps)
    keypoints = ToFrameLayer(name="to_frame")(coords, inverse)
    return keras.Model([image, box], [keypoints, confidence], name="pipeline")


# ----------------------------------------------------------------------------- conversion

_NETWORK_TENSOR = re.compile(rf"(^|/){NETWORK_SCOPE}(_\d+)?/")


def calibration_frames(calibration, card, frame_size: Sequence[int]):
    """Representative inputs for int8: each calibration crop (the eval crops of ``--quantize
    int8``) at the top-left of a blank frame, with the box whose crop is that crop itself
    (zoom 1, integer sample points), so the network is calibrated on exactly those crops."""
    from pipeline.sources import square_box
    h, w = (int(v) for v in card.input_size)
    if card.crop_mode == "frame":
        box = (0.0, 0.0, float(w), float(h))
    else:   # side 200 * scale * padding = min(h, w), widened to the crop aspect: the crop
        box = square_box((w / 2.0, h / 2.0), min(h, w) / (200.0 * card.padding))
    box = np.asarray(box, np.float32).reshape(1, 4)
    frame_h, frame_w = (int(v) for v in frame_size)

    def generate():
        for crop in calibration.images:
            frame = np.zeros((1, frame_h, frame_w, 3), np.uint8)
            frame[0, :min(h, frame_h), :min(w, frame_w)] = crop[:frame_h, :frame_w]
            yield [frame, box]          # in the order of INPUT_NAMES, the pipeline's inputs
    return generate


def convert_pipeline(model, card, frame_size: Sequence[int], quantization: str,
                     calibration=None, frozen: Optional[dict] = None) -> bytes:
    """Flatbuffer of the pipeline (``build_pipeline``) with its network in one quantization
    mode (``QUANTIZATIONS``: float32; float16 weights, ``half_network_weights``; dynamic-range
    int8 weights; int8, ``quantize_network``), checked to keep its geometry float32
    (``reduced_geometry``) and to use builtin ops only (``check_builtin_ops``), tensors named.
    `frozen`: {integer network?: the pipeline's ``frozen_call``} shared by the calls of one
    export, so the float modes build, trace and freeze the pipeline once."""
    import tensorflow as tf
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"--full_pipeline --quantize {quantization}: the pipeline is written with "
                          f"{', '.join(QUANTIZATIONS)}")
    integer = quantization == "int8"
    frozen = {} if frozen is None else frozen
    if integer not in frozen:
        frozen[integer] = frozen_call(build_pipeline(model, card, frame_size, integer=integer))
    converter = keras_converter(frozen=frozen[integer])
    if quantization in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if calibration is None or len(calibration.images) == 0:
            raise ExportError("--full_pipeline --quantize int8 needs calibration crops: pass "
                              "--representative (a TFRecords folder)")
        converter.representative_dataset = calibration_frames(calibration, card, frame_size)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        # calibrate only (as tf.lite.experimental.QuantizationDebugger does), then quantize
        # the network alone
        converter._experimental_calibrate_only = True   # noqa: SLF001
    with contextlib.redirect_stdout(io.StringIO()):
        data = converter.convert()
        if quantization == "int8":
            data = quantize_network(data)
    if quantization == "float16":
        data = half_network_weights(data)
    reduced = reduced_geometry(data)
    if reduced:
        raise ExportError(f"--full_pipeline --quantize {quantization}: {len(reduced)} geometry "
                          f"tensor(s) came out in reduced precision ({', '.join(reduced[:3])}); the "
                          f"keypoints would lose sub-pixel accuracy")
    data = name_tensors(data)
    check_builtin_ops(data)
    return data


def _is_network(tensor) -> bool:
    return bool(_NETWORK_TENSOR.search((tensor.name or b"").decode(errors="replace")))


def _network_ops(graph) -> tuple[list[bool], dict[int, list[bool]]]:
    """(per op: whether it belongs to the network, i.e. writes a tensor named in its scope;
    per tensor: that flag of every op reading it). Needs the converter's tensor names."""
    in_network = [any(_is_network(graph.tensors[i]) for i in op.outputs) for op in graph.operators]
    readers = {}
    for op, flag in zip(graph.operators, in_network):
        for i in op.inputs:
            if i >= 0:
                readers.setdefault(i, []).append(flag)
    return in_network, readers


def quantize_network(calibrated: bytes) -> bytes:
    """int8 network, float geometry: a calibrated flatbuffer quantized by TF's MLIR quantizer
    with everything outside the network kept float. Denylisting the geometry's ops
    (``denylisted_nodes``) is not enough: data-movement ops (the decoder's GATHERs) follow
    their input's scale, so the geometry's statistics are removed too; only tensors the
    network reads keep theirs."""
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    in_network, readers = _network_ops(graph)
    if not any(in_network):
        raise ExportError(f"no op of the pipeline's network ({NETWORK_SCOPE!r}) found: cannot keep "
                          f"its geometry float")
    geometry = set()
    for op, flag in zip(graph.operators, in_network):
        if flag:
            continue
        for i in op.outputs:
            geometry.add(graph.tensors[i].name.decode())
            if not all(readers.get(i, [False])):
                graph.tensors[i].quantization = None
    return mlir_quantize(bytes(flatbuffer_utils.convert_object_to_bytearray(model)),
                         denylisted_nodes=geometry)


def half_network_weights(data: bytes) -> bytes:
    """float16 network weights, float32 geometry: every float32 constant that only network
    ops read is stored as float16 and expanded by a DEQUANTIZE op ahead of the graph, as the
    converter's float16 mode does, which would also halve the geometry's constants (the
    decoder's blur taps, its 1e-10 log floor)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    _, readers = _network_ops(graph)
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = opcode.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    opcode.version = 3
    model.operatorCodes.append(opcode)
    users = {}
    for tensor in graph.tensors:
        users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    expand = []
    for index, tensor in enumerate(list(graph.tensors)):
        buffer = model.buffers[tensor.buffer]
        if (tensor.type != schema.TensorType.FLOAT32 or buffer.data is None or not len(buffer.data)
                or not readers.get(index) or not all(readers[index]) or users[tensor.buffer] > 1):
            continue
        half = schema.BufferT()
        half.data = np.frombuffer(np.frombuffer(bytes(buffer.data), np.float32).astype(np.float16)
                                  .tobytes(), np.uint8)
        model.buffers.append(half)
        stored = schema.TensorT()
        stored.shape, stored.type = tensor.shape, schema.TensorType.FLOAT16
        stored.buffer, stored.name = len(model.buffers) - 1, (tensor.name or b"") + b"_float16"
        graph.tensors.append(stored)
        buffer.data, tensor.buffer = None, 0            # now computed by the DEQUANTIZE below
        op = schema.OperatorT()
        op.opcodeIndex = len(model.operatorCodes) - 1
        op.inputs, op.outputs = [len(graph.tensors) - 1], [index]
        expand.append(op)
    graph.operators = expand + list(graph.operators)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def reduced_geometry(data: bytes) -> list[str]:
    """Names of the tensors that ops outside the network read or write in float16 or with a
    quantization scale, other than the heatmaps they read from the network and the network's
    quantized input; [] when the geometry is float32 (ints and the uint8 frame are exact).
    Needs the converter's tensor names (before ``name_tensors``)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(data)).subgraphs[0]
    in_network, readers = _network_ops(graph)
    written_by_network = {i for op, flag in zip(graph.operators, in_network) if flag for i in op.outputs}
    out = []
    for op, flag in zip(graph.operators, in_network):
        if flag:
            continue
        inputs = [i for i in op.inputs if i >= 0 and i not in written_by_network]
        outputs = [i for i in op.outputs if not all(readers.get(i, [False]))]
        for i in inputs + outputs:
            tensor = graph.tensors[i]
            scaled = tensor.quantization is not None and tensor.quantization.scale is not None \
                and len(tensor.quantization.scale) > 0
            if tensor.type == schema.TensorType.FLOAT16 or scaled:
                out.append((tensor.name or b"").decode())
    return sorted(set(out))


def name_tensors(data: bytes) -> bytes:
    """The flatbuffer with inputs ``image`` (rank 4) and ``box`` (rank 2), outputs
    ``keypoints`` (rank 3) and ``confidence`` (rank 2), in the tensors and the signature, and
    the internal tensors' names dropped (as ``export.convert.name_tensors`` does)."""
    from export.convert import rename_io

    def io_names(graph) -> dict:
        names = {}
        for indices, (rank4, rank2) in ((graph.inputs, INPUT_NAMES), (graph.outputs, OUTPUT_NAMES)):
            for index in indices:
                names[index] = rank2 if len(graph.tensors[index].shape) == 2 else rank4
        return names

    return rename_io(data, io_names)


def op_names(data: bytes) -> list[str]:
    """The operator codes of a flatbuffer: builtin names (``CONV_2D``), custom ops by their
    custom name (select-TF ops are ``Flex...``)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for code in model.operatorCodes:
        number = max(code.builtinCode, code.deprecatedBuiltinCode)
        out.append(code.customCode.decode() if number == schema.BuiltinOperator.CUSTOM
                   else builtin[number])
    return out


def check_builtin_ops(data: bytes) -> None:
    """ExportError when the flatbuffer uses a custom or select-TF (Flex) op."""
    from tensorflow.lite.python import schema_py_generated as schema
    builtin = set(vars(schema.BuiltinOperator))
    other = sorted(name for name in op_names(data) if name not in builtin)
    if other:
        raise ExportError(f"the pipeline needs non-builtin ops {', '.join(other)}: it would not run "
                          f"on a plain LiteRT runtime")


# ----------------------------------------------------------------------------- driver


def pipeline_card(source, quantization: str, frame_size: Sequence[int], data: bytes, calibration,
                  model_path: str):
    """The card of a pipeline file: the source's (keypoints, crop, codec), the tensors, and a
    ``pipeline`` entry saying what goes in and out and that the geometry is float."""
    from export.convert import tflite_io, variant_card
    inputs, outputs = tflite_io(data)
    for tensor in inputs + outputs:
        tensor["role"] = tensor["name"]
    card = variant_card(source, "tflite", quantization, False, inputs, outputs, calibration, model_path)
    h, w = (int(v) for v in frame_size)
    crop = (f"the box's padded square (padding {source.padding}) widened to the model aspect, as "
            f"evaluation crops" if source.crop_mode == "box" else
            f"the box's region letterboxed (padding {source.padding}), as evaluation crops a frame")
    frame_input = (f"RGB uint8 frame [1, {h}, {w}, 3] and box float32 [1, 4] (x, y, w, h in "
                   f"frame pixels); the file crops, normalizes, decodes and maps back inside")
    extra = dict(card.extra, integer_only=False)     # the geometry is float in every file
    return card.replace(input_normalization=frame_input, extra=dict(extra, pipeline={
        "frame_size": [h, w],
        "image": f"uint8 [1, {h}, {w}, 3] RGB frame; a smaller frame is padded at its bottom and "
                 f"right (pixel coordinates unchanged)",
        "box": "float32 [1, 4] x, y, w, h of the subject in frame pixels; the whole frame "
               "[0, 0, width, height] when there is no box",
        "keypoints": "float32 [1, K, 2] x, y in frame pixels (0-based, pixel centres at +0.5)",
        "confidence": "float32 [1, K] heatmap maximum",
        "crop": crop, "sampling": "bilinear, 0 outside the frame, rounded to 0..255: the "
                                  "evaluation crop's pixels, bit for bit",
        "refine": source.refine,
        "network": NETWORK_QUANTIZATION[quantization],
        "geometry": GEOMETRY,
    }))


def export_pipelines(model_path: str, output_dir: str, frame_size: Sequence[int],
                     quantizations: Sequence[str], calibration=None, card=None, model=None,
                     log=print) -> dict:
    """Write ``<stem>_<quantization>_pipeline.tflite`` (card inside, json beside) per mode
    into ``output_dir`` and list them under ``pipelines`` in its export_manifest.json (the
    heatmap ``variants`` that ``python -m export.verify`` scores are kept); returns the manifest."""
    import time

    from configs import atomic_write_bytes, atomic_write_json
    from export.convert import MANIFEST_NAME, QUANT_NAMES, file_size, merge_manifest, source_with_card
    from model.card import embed_in_tflite, metadata_path, write_card_beside
    model, source_card = source_with_card(model_path, card, model)
    bad = [q for q in quantizations if q not in QUANTIZATIONS]
    if bad:
        raise ExportError(f"--full_pipeline --quantize {' '.join(bad)}: the pipeline is written with "
                          f"{', '.join(QUANTIZATIONS)}")
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    written, frozen = [], {}
    for quantization in quantizations:
        started = time.time()
        data = convert_pipeline(model, source_card, frame_size, quantization, calibration, frozen)
        path = os.path.join(output_dir, f"{stem}_{QUANT_NAMES[quantization]}{SUFFIX}")
        file_card = pipeline_card(source_card, quantization, frame_size, data, calibration, model_path)
        atomic_write_bytes(path, embed_in_tflite(data, file_card))
        write_card_beside(path, file_card)
        seconds = time.time() - started
        entry = {"name": os.path.basename(path), "path": os.path.relpath(path, output_dir),
                 "format": "tflite", "quantization": QUANT_NAMES[quantization], "pipeline": True,
                 "frame_size": [int(v) for v in frame_size], "size_bytes": file_size(path),
                 "metadata": os.path.relpath(metadata_path(path), output_dir),
                 "seconds": round(seconds, 1)}
        written.append(entry)
        log(f"wrote {path} ({entry['size_bytes'] / 1e6:.2f} MB, {entry['quantization']} network, "
            f"float geometry, frame {frame_size[0]}x{frame_size[1]}, {seconds:.1f} s)")
    manifest = merge_manifest(output_dir, model_path, [], log)
    new = {entry["path"] for entry in written}
    manifest["pipelines"] = [p for p in manifest.get("pipelines", []) if p["path"] not in new
                             and os.path.exists(os.path.join(output_dir, p["path"]))] + written
    manifest.update({"source_model": os.path.abspath(model_path),
                     "source_metadata": os.path.abspath(metadata_path(model_path)),
                     "source_size_bytes": file_size(model_path)})
    atomic_write_json(os.path.join(output_dir, MANIFEST_NAME), manifest)
    return manifest


# ----------------------------------------------------------------------------- agreement


def frames_and_crops(tfrecords: str, split: str, card):
    """tf.data of (frame uint8 [h, w, 3], eval crop uint8, eval labels) per person of
    ``split``, in file order: the whole decoded image beside what ``run.py eval`` feeds."""
    import tensorflow as tf

    from export.records import check_spec, read_info, split_files
    from pipeline import decoder
    from pipeline.parser import Parser
    from pipeline.records import RecordsError

    check_spec(read_info(tfrecords), card.keypoints, tfrecords)
    files = split_files(tfrecords, split)
    if not files:
        raise RecordsError(f"{tfrecords}: no {split} records")
    parser = Parser(card.eval_parser_config(), card.keypoints)

    def parse(person):
        frame = tf.io.decode_image(person["encoded"], channels=3, expand_animations=False)
        crop, labels = parser.parse_eval(person)
        return frame, crop, labels

    return decoder.persons(tf.data.TFRecordDataset(files)).map(decoder.plain_graph(parse))


HALF_PX = 0.5          # the agreement with run.py eval the issue asks for: keypoints within
WITHIN_HALF_PX = 0.99  # half a pixel of eval's, for 99% of them (``agreement_problem``)


def agreement(pipeline_path: str, reference_path: str, tfrecords: str, split: str = "val",
              max_examples: Optional[int] = None, reference=None) -> dict:
    """The pipeline file's keypoints against ``run.py eval``'s for ``reference_path`` (the
    model it was exported from, or a crop model of the same quantization) on the same
    records: frame -> pipeline (box: ``record_box``, the record's crop exactly; the whole
    frame for a ``frame`` crop model) vs eval crop -> ``Predictor`` (the card's refinement, no
    flip) -> inverse crop affine. Returns pixel distances over every predicted keypoint
    (``max_px``, ``mean_px``, ``median_px``, ``p99_px``, ``over_half_px`` and its fraction),
    over labelled ones (``labelled_max_px``), the largest in crop pixels (``max_crop_px``:
    frame px times the crop's zoom), the largest confidence difference, PCK of both on the
    eval crops (``pck_reference``, ``pck_pipeline``, ``run.py eval``'s threshold) and COCO
    OKS AP of both against the records' ground truth (``ap_reference``, ``ap_pipeline``)
    where the keypoints have OKS sigmas; ``skipped_frames``: images larger than the
    pipeline's frame (not compared). ``reference``: the runner of ``reference_path`` when
    the caller has it open."""
    from model.evaluation import coco_ground_truth, ground_truth_annotation
    from model.metrics import coco_keypoint_ap, coco_result, pck_counts, pck_threshold_px
    from model.predictor import Predictor
    from model.runner import PipelineRunner, load_runner
    from pipeline import affine

    pipeline = PipelineRunner(pipeline_path)
    reference = reference if reference is not None else load_runner(reference_path)
    card = reference.card
    if card is None:
        raise ExportError(f"{reference_path} carries no model card: the eval crop comes from it")
    predictor = Predictor(reference, card)
    dataset = frames_and_crops(tfrecords, split, card)
    if max_examples:
        dataset = dataset.take(int(max_examples))
    threshold = pck_threshold_px(card.input_size, card.output_stride)
    distances, crop_distances, labelled, conf_diff = [], [], [], []
    ours, theirs, truth = [], [], []
    pck = {"pipeline": np.zeros(2), "reference": np.zeros(2)}
    skipped = 0
    for frame, crop, labels in dataset:
        labels = {k: v.numpy() for k, v in labels.items()}
        frame = frame.numpy()
        if frame.shape[0] > pipeline.frame_size[0] or frame.shape[1] > pipeline.frame_size[1]:
            skipped += 1
            continue
        coords, conf = predictor.crop_keypoints(crop.numpy()[None])
        expected = predictor.to_image(coords, labels["matrix"][None])[0]
        box = None if card.crop_mode == "frame" else record_box(labels["center"], labels["scale"])
        keypoints, confidence = pipeline(frame, box)
        distance = np.linalg.norm(keypoints.astype(np.float64) - expected, axis=-1)
        distances.append(distance)
        crop_distances.append(distance * np.sqrt(abs(np.linalg.det(labels["matrix"][:2, :2]))))
        labelled.append(distance[labels["visibility"] > 0])
        conf_diff.append(np.abs(confidence - conf[0]))
        for name, xy in (("pipeline", affine.transform_points_np(labels["matrix"], keypoints)),
                         ("reference", coords[0])):
            correct, total = pck_counts(xy[None], labels["keypoints"][None], labels["weights"][None],
                                        threshold)
            pck[name] += (float(np.sum(correct)), float(np.sum(total)))
        image_id = int(labels["source_id"])
        ours.append(coco_result(image_id, keypoints.astype(np.float64), confidence.astype(np.float64)))
        theirs.append(coco_result(image_id, expected, conf[0]))
        truth.append(ground_truth_annotation(image_id, labels["orig_keypoints"], labels["visibility"],
                                             labels["area"], labels["bbox"]))
    if not distances:
        raise ExportError(f"{tfrecords}: no {split} records to compare on"
                          + (f" ({skipped} image(s) larger than the pipeline's "
                             f"{pipeline.frame_size[0]}x{pipeline.frame_size[1]} frame)" if skipped else ""))
    distances, labelled = np.concatenate(distances), np.concatenate(labelled)
    out = {"examples": len(ours), "keypoints": int(distances.size), "max_px": float(distances.max()),
           "mean_px": float(distances.mean()), "median_px": float(np.median(distances)),
           "p99_px": float(np.percentile(distances, 99)), "over_half_px": int((distances > HALF_PX).sum()),
           "over_half_px_fraction": float((distances > HALF_PX).mean()),
           "labelled_max_px": float(labelled.max()) if labelled.size else 0.0,
           "max_crop_px": float(np.concatenate(crop_distances).max()),
           "max_confidence_diff": float(np.concatenate(conf_diff).max()),
           "skipped_frames": skipped,
           "frame_size": list(pipeline.frame_size), "reference": os.path.abspath(reference_path),
           "pipeline": os.path.abspath(pipeline_path)}
    for name, (correct, total) in pck.items():
        out[f"pck_{name}"] = correct / total if total else None
    sigmas = card.keypoints.oks_sigmas
    if sigmas is not None:
        ground_truth = coco_ground_truth(truth, card.keypoints)
        out["ap_reference"] = coco_keypoint_ap(ground_truth, theirs, sigmas)["AP"]
        out["ap_pipeline"] = coco_keypoint_ap(ground_truth, ours, sigmas)["AP"]
    return out


def agreement_problem(result: dict) -> Optional[str]:
    """Why ``agreement``'s result misses the bar (99% of keypoints within half a pixel of
    ``run.py eval``'s), or None."""
    if result["over_half_px_fraction"] <= 1.0 - WITHIN_HALF_PX + 1e-12:
        return None
    return (f"{result['over_half_px']} of {result['keypoints']} keypoints "
            f"({100 * result['over_half_px_fraction']:.1f}%) are more than {HALF_PX} px from run.py "
            f"eval's of {os.path.basename(result['reference'])} (at most "
            f"{100 * (1 - WITHIN_HALF_PX):.0f}% may be)")
