"""One call for every model file: `.keras`, a SavedModel folder, or `.tflite`.

A runner takes RGB uint8 crops [B, H, W, 3] and returns the last stack's heatmaps
[B, H/s, W/s, K] as float32 numpy. Its `metadata` is the json saved beside the model
(`metadata_path`): keypoint names, flip pairs, skeleton, input size, stride, crop mode.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional

import numpy as np

from configs import KeypointSpec, atomic_write_json

DEFAULT_STRIDE = 4


class ModelFileError(ValueError):
    """A model file that is not a usable keypoint model; the message names the file."""


def check_geometry(path: str, input_shape, output_shape) -> tuple[tuple[int, int], int, int]:
    """((H, W), stride, K) of an image input [B, H, W, 3] and a heatmap output
    [B, H/s, W/s, K]; ModelFileError naming `path` when the model is not that (input size not
    fixed or not a multiple of 32, not 3 channels, no 4-D output, uneven stride)."""
    input_shape, output_shape = list(input_shape), list(output_shape)
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
    if len(output_shape) != 4 or not output_shape[1] or not output_shape[2] or not output_shape[3]:
        raise ModelFileError(f"{path}: expected heatmaps [batch, H/s, W/s, K] as the last output, "
                             f"got {output_shape}")
    oh, ow, k = (int(v) for v in output_shape[1:])
    if h % oh or w % ow or h // oh != w // ow:
        raise ModelFileError(f"{path}: heatmaps {oh}x{ow} are not the {h}x{w} input divided by "
                             f"one stride")
    return (h, w), h // oh, k


def metadata_path(model_path: str) -> str:
    """`model.keras` -> `model.json`; a SavedModel folder -> `folder/hourglass_metadata.json`."""
    model_path = model_path.rstrip("/")
    if os.path.isdir(model_path):
        return os.path.join(model_path, "hourglass_metadata.json")
    return os.path.splitext(model_path)[0] + ".json"


def model_metadata(spec: KeypointSpec, input_size, stride: int = DEFAULT_STRIDE,
                   crop_mode: str = "box", padding: float = 1.25, **extra) -> dict:
    """The json saved beside a model: the keypoint definition (names, flip pairs, skeleton,
    ``oks_sigmas`` {name: sigma} or null), input size, stride, crop; plus ``extra``."""
    data = spec.to_dict()
    data.update(input_size=list(input_size), output_stride=stride, crop_mode=crop_mode,
                padding=padding, input="RGB uint8 0-255, normalized inside the model")
    data.update(extra)
    return data


def write_metadata(model_path: str, metadata: dict) -> str:
    path = metadata_path(model_path)
    atomic_write_json(path, metadata)
    return path


def read_metadata(model_path: str) -> dict:
    path = metadata_path(model_path)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


class Runner:
    input_size: tuple[int, int]
    num_keypoints: int
    stride: int
    metadata: dict
    kind: str

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class KerasRunner(Runner):
    kind = "keras"

    def __init__(self, path: str, model=None):
        import keras
        import tensorflow as tf
        self.model = model if model is not None else keras.models.load_model(
            path, compile=False, safe_mode=True)
        if len(self.model.inputs) != 1:
            raise ModelFileError(f"{path}: expected one image input, got {len(self.model.inputs)}")
        self.input_size, self.stride, self.num_keypoints = check_geometry(
            path, self.model.inputs[0].shape, self.model.outputs[-1].shape)
        self.metadata = read_metadata(path) if path else {}
        from model import as_stack_list
        model_ = self.model
        self._fn = tf.function(lambda x: as_stack_list(model_(x, training=False))[-1],
                               reduce_retracing=True)

    def __call__(self, images):
        return self._fn(np.asarray(images, np.uint8)).numpy().astype(np.float32)


class SavedModelRunner(Runner):
    kind = "saved_model"

    def __init__(self, path: str):
        import tensorflow as tf
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
        self.metadata = read_metadata(path)

    def __call__(self, images):
        import tensorflow as tf
        out = self._fn(**{self._input_name: tf.constant(np.asarray(images, np.uint8))})
        return out[self._output_name].numpy().astype(np.float32)


class TFLiteRunner(Runner):
    kind = "tflite"

    def __init__(self, path: str, num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        outs = self.interpreter.get_output_details()
        heat = [o for o in outs if len(o["shape"]) == 4]
        if not heat:
            raise ModelFileError(f"{path}: no heatmap output (a model exported --with_decoder gives "
                             f"coordinates; evaluate the heatmap model instead)")
        self._in = inp
        self._out = heat[-1] if len(heat) == 1 else sorted(heat, key=lambda o: o["name"])[-1]
        self.input_size, self.stride, self.num_keypoints = check_geometry(
            path, [int(v) for v in inp["shape"]], [int(v) for v in self._out["shape"]])
        self.metadata = read_metadata(path)

    def __call__(self, images):
        images = np.asarray(images, np.uint8)
        results = []
        for image in images:   # the converted model has batch 1
            x = image[None]
            if self._in["dtype"] != np.uint8:
                x = x.astype(self._in["dtype"])
            self.interpreter.set_tensor(self._in["index"], x)
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self._out["index"])
            scale, zero = self._out["quantization"]
            if self._out["dtype"] in (np.int8, np.uint8) and scale:
                y = (y.astype(np.float32) - zero) * scale
            results.append(y[0].astype(np.float32))
        return np.stack(results)


def _last_heatmap_name(names: list[str]) -> str:
    """The last stack's output: 'heatmaps' when exported alone, else the highest stack_N."""
    if len(names) == 1:
        return names[0]
    numbered = [(int(m.group(1)), n) for n in names if (m := re.search(r"stack_(\d+)", n))]
    return max(numbered)[1] if numbered else sorted(names)[-1]


def load_runner(path: str) -> Runner:
    """A runner for a `.keras` file, a SavedModel folder or a `.tflite` file.
    FileNotFoundError when missing; ModelFileError (a ValueError naming the file) when it is
    not a readable model of that kind or not an image -> heatmaps model."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model_path {path}: no such file or folder")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ModelFileError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        kind, make = "SavedModel", SavedModelRunner
    elif path.endswith(".keras"):
        kind, make = ".keras model", KerasRunner
    elif path.endswith(".tflite"):
        kind, make = "TFLite model", TFLiteRunner
    else:
        raise ModelFileError(f"{path}: unknown model format; expected .keras, .tflite or a "
                             f"SavedModel folder")
    try:
        return make(path)
    except (ModelFileError, ImportError):
        raise
    except Exception as e:  # noqa: BLE001 - Keras, TF and LiteRT raise many kinds for a bad file
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelFileError(f"{path}: cannot be read as a {kind} ({type(e).__name__}: {detail}); "
                             f"pass a model written by run.py train or python -m export") from e
