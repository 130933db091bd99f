"""Every model file behind one call: `.keras`, a SavedModel folder, `.tflite` or `.onnx`.

A runner takes RGB uint8 crops [B, H, W, 3]. A heatmap model's runner returns the last
stack's heatmaps [B, H/s, W/s, K] (float32 numpy) from ``__call__``; a model exported with
its decoder (``--with_decoder``) has ``decodes = True`` and returns (keypoints [B, K, 2] in
crop pixels, confidence [B, K]) from ``keypoints``. ``runner.card`` is the model card read
from the file (``model.card``), None for a file that carries none. The LiteRT interpreter is
set up in one place (``open_interpreter``). A frame -> keypoints file (``python -m export
--full_pipeline``) is not a crop model: ``PipelineRunner`` takes a frame and a box.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from model.card import (  # noqa: F401  (metadata_path: the json beside a model)
    CardError,
    ModelCard,
    metadata_path,
    read_card,
)


class ModelFileError(ValueError):
    """A model file that is not a usable keypoint model; the message names the file."""


def check_geometry(path: str, input_shape, output_shape) -> tuple[tuple[int, int], int, int]:
    """((H, W), stride, K) of an image input [B, H, W, 3] and a heatmap output
    [B, H/s, W/s, K]; ModelFileError naming `path` when the model is not that (input size not
    fixed or not a multiple of 32, not 3 channels, no 4-D output, uneven stride)."""
    input_shape, output_shape = list(input_shape), list(output_shape)
    h, w = _check_image_input(path, input_shape)
    if len(output_shape) != 4 or not output_shape[1] or not output_shape[2] or not output_shape[3]:
        raise ModelFileError(f"{path}: expected heatmaps [batch, H/s, W/s, K] as the last output, "
                             f"got {output_shape}")
    oh, ow, k = (int(v) for v in output_shape[1:])
    if h % oh or w % ow or h // oh != w // ow:
        raise ModelFileError(f"{path}: heatmaps {oh}x{ow} are not the {h}x{w} input divided by "
                             f"one stride")
    return (h, w), h // oh, k


def _check_image_input(path: str, input_shape) -> tuple[int, int]:
    input_shape = list(input_shape)
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ModelFileError(f"{path}: expected an image input [batch, H, W, 3], got {input_shape}")
    h, w = input_shape[1:3]
    if h is None or w is None or int(h) < 1 or int(w) < 1:
        raise ModelFileError(f"{path}: the input size is not fixed ({input_shape}); export the "
                             f"model with a fixed HxW")
    h, w = int(h), int(w)
    if h % 32 or w % 32:
        raise ModelFileError(f"{path}: input size {h}x{w} is not a multiple of 32, which the "
                             f"hourglass needs; not a model this project wrote")
    return h, w


def open_interpreter(model, num_threads: Optional[int] = None):
    """An allocated LiteRT interpreter of a `.tflite` path or flatbuffer bytes."""
    from ai_edge_litert.interpreter import Interpreter
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
    else:
        interpreter = Interpreter(model_path=model, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


class Runner:
    """uint8 crops -> heatmaps (``__call__``) or, when ``decodes``, -> keypoints (``keypoints``)."""

    input_size: tuple[int, int]
    num_keypoints: int
    stride: int
    kind: str
    card: Optional[ModelCard] = None
    card_source: str = "none"
    decodes: bool = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise ModelFileError(f"{self.kind} model {self.path} ends in its keypoint decoder and "
                             f"outputs no heatmaps")

    def keypoints(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _read_card(self, path: str) -> None:
        try:
            self.card, self.card_source = read_card(path)
        except CardError as e:
            raise ModelFileError(str(e)) from e
        if self.card is not None and self.card.num_keypoints != self.num_keypoints:
            raise ModelFileError(f"{path} outputs {self.num_keypoints} keypoints but its model card "
                                 f"names {self.card.num_keypoints}")


class KerasRunner(Runner):
    kind = "keras"

    def __init__(self, path: str, model=None):
        import keras
        import tensorflow as tf
        self.path = path
        self.model = model if model is not None else keras.models.load_model(
            path, compile=False, safe_mode=True)
        if len(self.model.inputs) != 1:
            raise ModelFileError(f"{path}: expected one image input, got {len(self.model.inputs)}")
        self.input_size, self.stride, self.num_keypoints = check_geometry(
            path, self.model.inputs[0].shape, self.model.outputs[-1].shape)
        if path:
            self._read_card(path)
        from model import as_stack_list
        model_ = self.model
        # any batch size: one trace (a last, smaller batch would trace again)
        batch = tf.TensorSpec([None, *self.input_size, 3], tf.uint8)
        self._fn = tf.function(lambda x: as_stack_list(model_(x, training=False))[-1],
                               input_signature=[batch])

    def __call__(self, images):
        return self._fn(np.asarray(images, np.uint8)).numpy().astype(np.float32)


class SavedModelRunner(Runner):
    kind = "saved_model"

    def __init__(self, path: str):
        import tensorflow as tf
        self.path = path
        loaded = tf.saved_model.load(path)
        self._loaded = loaded
        self._fn = loaded.signatures["serving_default"]
        spec = self._fn.structured_input_signature[1]
        image_spec = next(iter(spec.values()))
        self._input_name = next(iter(spec.keys()))
        outputs = self._fn.structured_outputs
        self._output_name = _last_heatmap_name(list(outputs.keys()))
        self.input_size, self.stride, self.num_keypoints = check_geometry(
            path, image_spec.shape.as_list(), outputs[self._output_name].shape.as_list())
        self._read_card(path)

    def __call__(self, images):
        import tensorflow as tf
        out = self._fn(**{self._input_name: tf.constant(np.asarray(images, np.uint8))})
        return out[self._output_name].numpy().astype(np.float32)


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
        return (value.astype(np.float32) - zero) * scale
    return value.astype(np.float32)


class TFLiteRunner(Runner):
    """A batch-1 `.tflite` model, heatmaps out or (with its decoder) keypoints out."""

    kind = "tflite"

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.path = path
        self.interpreter = open_interpreter(path, num_threads)
        if len(self.interpreter.get_input_details()) != 1:
            raise ModelFileError(f"{path}: a frame -> keypoints pipeline (inputs image and box, "
                                 f"python -m export --full_pipeline), not a crop model: run.py "
                                 f"predict and model.runner.PipelineRunner take it; eval and "
                                 f"verify take the crop models python -m export writes without "
                                 f"--full_pipeline")
        self._in = self.interpreter.get_input_details()[0]
        outs = self.interpreter.get_output_details()
        heat = [o for o in outs if len(o["shape"]) == 4]
        by_rank = {len(o["shape"]): o for o in outs}
        if heat:
            self._out = heat[-1] if len(heat) == 1 else sorted(heat, key=lambda o: o["name"])[-1]
            self.input_size, self.stride, self.num_keypoints = check_geometry(
                path, [int(v) for v in self._in["shape"]], [int(v) for v in self._out["shape"]])
        elif set(by_rank) == {2, 3}:
            self.decodes = True
            self._coords, self._conf = by_rank[3], by_rank[2]
            self.input_size = _check_image_input(path, [int(v) for v in self._in["shape"]])
            self.num_keypoints = int(self._coords["shape"][1])
            self.stride = None
        else:
            raise ModelFileError(f"{path}: neither heatmaps [1, h, w, K] nor keypoints [1, K, 2] "
                                 f"with confidence [1, K] as outputs")
        self._read_card(path)
        if self.decodes:
            self.stride = self.card.output_stride if self.card is not None else None

    def _invoke(self, image: np.ndarray) -> None:
        x = image[None]
        if self._in["dtype"] != np.uint8:
            x = x.astype(self._in["dtype"])
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()

    def __call__(self, images):
        if self.decodes:
            return super().__call__(images)
        results = []
        for image in np.asarray(images, np.uint8):   # the converted model has batch 1
            self._invoke(image)
            results.append(_dequantize(self.interpreter.get_tensor(self._out["index"]), self._out)[0])
        return np.stack(results)

    def keypoints(self, images):
        coords, conf = [], []
        for image in np.asarray(images, np.uint8):
            self._invoke(image)
            coords.append(self.interpreter.get_tensor(self._coords["index"])[0])
            conf.append(self.interpreter.get_tensor(self._conf["index"])[0])
        return np.stack(coords).astype(np.float32), np.stack(conf).astype(np.float32)


class OnnxRunner(Runner):
    """An ONNX export through onnxruntime (an optional extra); its card is the json beside it."""

    kind = "onnx"

    def __init__(self, path: str):
        import onnxruntime
        self.path = path
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.decodes = "heatmaps" not in self._outputs
        card, _ = read_card(path)
        if card is None:
            raise ModelFileError(f"{path}: an ONNX model needs its card json beside it "
                                 f"({metadata_path(path)}), written by python -m export")
        self.input_size = tuple(card.input_size)
        self.stride, self.num_keypoints = card.output_stride, card.num_keypoints
        self.card, self.card_source = card, metadata_path(path)

    def _run(self, images):
        feed = {self._input.name: np.asarray(images, np.uint8)}
        return dict(zip(self._outputs, self.session.run(None, feed)))

    def __call__(self, images):
        if self.decodes:
            return super().__call__(images)
        return self._run(images)["heatmaps"].astype(np.float32)

    def keypoints(self, images):
        out = self._run(images)
        return out["keypoints"].astype(np.float32), out["confidence"].astype(np.float32)


def _last_heatmap_name(names: list[str]) -> str:
    """The last stack's output: 'heatmaps' when exported alone, else the highest stack_N."""
    if len(names) == 1:
        return names[0]
    numbered = [(int(m.group(1)), n) for n in names if (m := re.search(r"stack_(\d+)", n))]
    return max(numbered)[1] if numbered else sorted(names)[-1]


def load_runner(path: str, num_threads: Optional[int] = None) -> Runner:
    """A runner for a `.keras` file, a SavedModel folder, a `.tflite` or an `.onnx` file.
    FileNotFoundError when missing; ModelFileError (a ValueError naming the file) when it is
    not a readable model of that kind or not an image -> heatmaps/keypoints model."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model_path {path}: no such file or folder")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ModelFileError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        kind, make = "SavedModel", SavedModelRunner
    elif path.endswith(".keras"):
        kind, make = ".keras model", KerasRunner
    elif path.endswith(".tflite"):
        kind, make = "TFLite model", (lambda p: TFLiteRunner(p, num_threads))
    elif path.endswith(".onnx"):
        kind, make = "ONNX model", OnnxRunner
    else:
        raise ModelFileError(f"{path}: unknown model format; expected .keras, .tflite, .onnx or a "
                             f"SavedModel folder")
    try:
        return make(path)
    except (ModelFileError, ImportError):
        raise
    except Exception as e:  # noqa: BLE001 - Keras, TF and LiteRT raise many kinds for a bad file
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelFileError(f"{path}: cannot be read as a {kind} ({type(e).__name__}: {detail}); "
                             f"pass a model written by run.py train or python -m export") from e


class PipelineRunner:
    """A frame -> keypoints `.tflite` (``python -m export --full_pipeline``): one RGB frame
    uint8 [h, w, 3] of at most the exported H x W (padded at its bottom and right here, as
    device code does) and a box (x, y, w, h; None: the whole frame) -> (keypoints [K, 2] in
    frame pixels, confidence [K]). Not a crop runner: eval and verify feed crops."""

    kind = "tflite_pipeline"

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.path = path
        self.interpreter = open_interpreter(path, num_threads)
        inputs = {len(d["shape"]): d for d in self.interpreter.get_input_details()}
        outputs = {len(d["shape"]): d for d in self.interpreter.get_output_details()}
        if set(inputs) != {2, 4} or set(outputs) != {2, 3}:
            raise ModelFileError(f"{path}: not a frame -> keypoints pipeline (inputs image [1, H, "
                                 f"W, 3] and box [1, 4], outputs keypoints [1, K, 2] and "
                                 f"confidence [1, K]); write one with python -m export --full_pipeline")
        self._image, self._box = inputs[4], inputs[2]
        self._keypoints, self._confidence = outputs[3], outputs[2]
        self.frame_size = tuple(int(v) for v in self._image["shape"][1:3])
        self.num_keypoints = int(self._keypoints["shape"][1])
        try:
            self.card, self.card_source = read_card(path)
        except CardError as e:
            raise ModelFileError(str(e)) from e

    def __call__(self, frame: np.ndarray, box=None) -> tuple[np.ndarray, np.ndarray]:
        frame = np.asarray(frame, np.uint8)
        h, w = frame.shape[:2]
        if h > self.frame_size[0] or w > self.frame_size[1] or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{self.path} takes RGB frames of at most {self.frame_size[0]}x"
                             f"{self.frame_size[1]} (HxW), got {list(frame.shape)}; export it "
                             f"again with --frame_size {h}x{w} (or larger)")
        box = np.asarray([0.0, 0.0, w, h] if box is None else box, np.float32).reshape(1, 4)
        if not np.all(np.isfinite(box)) or box[0, 2] <= 0 or box[0, 3] <= 0:
            raise ValueError(f"box {box[0].tolist()}: expected x, y, w, h in frame pixels with "
                             f"w, h > 0 (None: the whole frame)")
        padded = np.zeros(self.frame_size + (3,), np.uint8)
        padded[:h, :w] = frame
        self.interpreter.set_tensor(self._image["index"], padded[None])
        self.interpreter.set_tensor(self._box["index"], box)
        self.interpreter.invoke()
        return (self.interpreter.get_tensor(self._keypoints["index"])[0].astype(np.float32),
                self.interpreter.get_tensor(self._confidence["index"])[0].astype(np.float32))
