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


def metadata_path(model_path: str) -> str:
    """`model.keras` -> `model.json`; a SavedModel folder -> `folder/hourglass_metadata.json`."""
    model_path = model_path.rstrip("/")
    if os.path.isdir(model_path):
        return os.path.join(model_path, "hourglass_metadata.json")
    return os.path.splitext(model_path)[0] + ".json"


def model_metadata(spec: KeypointSpec, input_size, stride: int = DEFAULT_STRIDE,
                   crop_mode: str = "box", padding: float = 1.25, **extra) -> dict:
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
        _, h, w, _ = self.model.inputs[0].shape
        out = self.model.outputs[-1].shape
        self.input_size = (int(h), int(w))
        self.num_keypoints = int(out[-1])
        self.stride = self.input_size[0] // int(out[1])
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
        _, h, w, _ = image_spec.shape
        self.input_size = (int(h), int(w))
        outputs = self._fn.structured_outputs
        self._output_name = _last_heatmap_name(list(outputs.keys()))
        shape = outputs[self._output_name].shape
        self.num_keypoints = int(shape[-1])
        self.stride = self.input_size[0] // int(shape[1])
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
            raise ValueError(f"{path}: no heatmap output (a model exported --with_decoder gives "
                             f"coordinates; evaluate the heatmap model instead)")
        self._in = inp
        self._out = heat[-1] if len(heat) == 1 else sorted(heat, key=lambda o: o["name"])[-1]
        _, h, w, _ = inp["shape"]
        self.input_size = (int(h), int(w))
        self.num_keypoints = int(self._out["shape"][-1])
        self.stride = self.input_size[0] // int(self._out["shape"][1])
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
    """A runner for a `.keras` file, a SavedModel folder or a `.tflite` file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--model_path {path}: no such file or folder")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        return SavedModelRunner(path)
    if path.endswith(".keras"):
        return KerasRunner(path)
    if path.endswith(".tflite"):
        return TFLiteRunner(path)
    raise ValueError(f"{path}: unknown model format; expected .keras, .tflite or a SavedModel folder")
