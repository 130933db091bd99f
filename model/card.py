"""The model card: everything a consumer of a model file needs, travelling inside the file.

One plain dataclass, ``ModelCard``: the keypoint definition (names, flip pairs, skeleton, OKS
sigmas), the architecture (stacks, channels, mobile), the crop (input size, output stride,
crop mode, padding), the codec (sigma, refinement), the input normalization and, for exported
files, the format, quantization and the input/output tensors with their quantization
parameters. Training and export write it; eval, predict, export, verify and fine-tuning read
it and build their codec and crop from it.

Where it lives (``write_card`` / ``read_card``):
- ``.keras``: the archive member ``hourglass_card.json`` (Keras ignores unknown members);
- SavedModel folder: ``assets.extra/hourglass_card.json``;
- ``.tflite``: the flatbuffer metadata entry ``hourglass_card`` (``embed_in_tflite``);
- and always a readable copy beside the model (``metadata_path``: ``model.json``; a
  SavedModel's ``hourglass_metadata.json``). The copy inside the file wins; the json beside
  is read only for files written before cards were embedded. A model copied alone keeps its
  card.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Optional

from configs import KeypointSpec, KeypointSpecError, atomic_write_json
from configs.files import atomic_path
from model.hourglass import OUTPUT_STRIDE

CARD_VERSION = 1
CARD_MEMBER = "hourglass_card.json"           # .keras member, SavedModel assets.extra file
TFLITE_METADATA_NAME = "hourglass_card"       # .tflite metadata entry
NORMALIZATION = ("RGB uint8 0-255 crop [B, H, W, 3], fed as is; the model's first layer maps it "
                 "to [-1, 1]")
DEFAULTS = {"crop_mode": "box", "padding": 1.25, "sigma": 2.0, "refine": "dark"}


class CardError(ValueError):
    """A model card that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a model file is and how to feed it (see the module docstring)."""

    keypoints: KeypointSpec
    input_size: tuple[int, int]
    output_stride: int = OUTPUT_STRIDE
    num_stacks: Optional[int] = None          # architecture; None: not known (an old file)
    num_channels: Optional[int] = None
    mobile: Optional[bool] = None
    crop_mode: str = DEFAULTS["crop_mode"]     # box: the person box; frame: whole image letterboxed
    padding: float = DEFAULTS["padding"]       # box crops: box side x padding
    sigma: float = DEFAULTS["sigma"]           # heatmap Gaussian (heatmap px); DARK decodes with it
    refine: str = DEFAULTS["refine"]           # default sub-pixel refinement
    input_normalization: str = NORMALIZATION
    format: str = "keras"                      # keras | saved_model | tflite | onnx
    quantization: str = "float32"              # float32 | float16 | dynamic | int8
    batch: Optional[int] = None                # fixed batch (TFLite: 1), None: any
    decoder: Optional[str] = None              # refinement of a built-in decoder (outputs crop px)
    inputs: tuple = ()                         # exported tensors: name, shape, dtype, scale, zero_point
    outputs: tuple = ()
    extra: dict = dataclasses.field(default_factory=dict)   # provenance: source model, calibration

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.num_keypoints

    @property
    def architecture(self) -> Optional[dict]:
        if self.num_stacks is None:
            return None
        return {"num_stacks": self.num_stacks, "num_channels": self.num_channels,
                "mobile": self.mobile}

    def codec(self):
        """The heatmap codec this model was trained with (input size, stride, sigma)."""
        from pipeline.codec import HeatmapCodec
        return HeatmapCodec(self.input_size, self.output_stride, self.sigma)

    def eval_parser_config(self):
        """The eval crop this model expects (``pipeline.parser.ParserConfig``, no augmentation)."""
        from pipeline.parser import ParserConfig
        return ParserConfig(input_size=tuple(self.input_size), stride=self.output_stride,
                            crop_mode=self.crop_mode, padding=self.padding, sigma=self.sigma)

    def replace(self, **changes) -> "ModelCard":
        return dataclasses.replace(self, **changes)

    def with_flags(self, source: str, **flags) -> tuple["ModelCard", list[str]]:
        """The card with the given settings (``None`` = not given) replaced, and one notice per
        setting that differs from the card (the flag is used)."""
        notices, changes = [], {}
        for name, value in flags.items():
            if value is None:
                continue
            current = getattr(self, name)
            if value != current:
                notices.append(f"--{name} {value} differs from the {name} {current} the model "
                               f"card of {source} records; using --{name} {value}")
                changes[name] = value
        return (self.replace(**changes) if changes else self), notices

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict:
        """Flat json: the keypoint definition's keys (``keypoint_names``, ``flip_pairs``,
        ``skeleton``, ``oks_sigmas``), then the model's settings."""
        data = {"card_version": CARD_VERSION}
        data.update(self.keypoints.to_dict())
        data.update(num_keypoints=self.num_keypoints, architecture=self.architecture,
                    input_size=list(self.input_size), output_stride=self.output_stride,
                    crop_mode=self.crop_mode, padding=self.padding, sigma=self.sigma,
                    refine=self.refine, input=self.input_normalization, format=self.format,
                    quantization=self.quantization,
                    batch=self.batch if self.batch is not None else "any")
        if self.decoder:
            data["decoder"] = {"refine": self.decoder,
                               "keypoints": "crop-input pixels [K, 2] (x, y)",
                               "confidence": "heatmap maximum [K]"}
        if self.inputs:
            data["inputs"] = [dict(t) for t in self.inputs]
        if self.outputs:
            data["outputs"] = [dict(t) for t in self.outputs]
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "ModelCard":
        """A card from ``to_dict`` output, or from the json an older version wrote beside a
        model (no architecture, sigma or refine: defaults). CardError names ``source``."""
        try:
            spec = KeypointSpec.from_dict(data, source)
            arch = data.get("architecture") or {}
            decoder = data.get("decoder")
            known = {"card_version", "keypoint_names", "flip_pairs", "skeleton", "oks_sigmas",
                     "num_keypoints", "architecture", "input_size", "output_stride", "crop_mode",
                     "padding", "sigma", "refine", "input", "format", "quantization", "batch",
                     "decoder", "inputs", "outputs"}
            batch = data.get("batch")
            return cls(
                keypoints=spec, input_size=tuple(int(v) for v in data["input_size"]),
                output_stride=int(data.get("output_stride", OUTPUT_STRIDE)),
                num_stacks=arch.get("num_stacks"), num_channels=arch.get("num_channels"),
                mobile=arch.get("mobile"),
                crop_mode=data.get("crop_mode", DEFAULTS["crop_mode"]),
                padding=float(data.get("padding", DEFAULTS["padding"])),
                sigma=float(data.get("sigma", DEFAULTS["sigma"])),
                refine=data.get("refine", DEFAULTS["refine"]),
                input_normalization=data.get("input", NORMALIZATION),
                format=data.get("format", "keras"), quantization=data.get("quantization", "float32"),
                batch=batch if isinstance(batch, int) else None,
                decoder=decoder.get("refine") if isinstance(decoder, dict) else None,
                inputs=tuple(data.get("inputs") or ()), outputs=tuple(data.get("outputs") or ()),
                extra={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError, ValueError, KeypointSpecError) as e:
            raise CardError(f"{source}: not a valid model card ({type(e).__name__}: {e})") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def card_for_model(model, spec: KeypointSpec, *, crop_mode: str = DEFAULTS["crop_mode"],
                   padding: float = DEFAULTS["padding"], sigma: float = DEFAULTS["sigma"],
                   refine: str = DEFAULTS["refine"]) -> ModelCard:
    """The card of a Keras hourglass: geometry and architecture read from the model itself."""
    from model.hourglass import hourglass_config
    from model.runner import check_geometry
    (h, w), stride, k = check_geometry(model.name, model.inputs[0].shape, model.outputs[-1].shape)
    if k != spec.num_keypoints:
        raise CardError(f"model {model.name} outputs {k} heatmaps but the keypoint definition "
                        f"names {spec.num_keypoints}")
    try:
        arch = hourglass_config(model)
        arch = {"num_stacks": arch.num_stacks, "num_channels": arch.num_channels,
                "mobile": arch.mobile}
    except (ValueError, AttributeError):
        arch = {}
    return ModelCard(keypoints=spec, input_size=(h, w), output_stride=stride, crop_mode=crop_mode,
                     padding=float(padding), sigma=float(sigma), refine=refine, **arch)


def fine_tune_notices(source_path: str, card: ModelCard) -> list[str]:
    """What differs between the card of the model fine-tuning starts from and the new run's
    (keypoints, input size, crop, sigma): one line each; [] when the source carries no card."""
    try:
        source, _ = read_card(source_path)
    except CardError as e:
        return [str(e)]
    if source is None:
        return [f"{source_path} carries no model card; its crop and sigma cannot be compared"]
    notes = []
    if list(source.keypoints.names) != list(card.keypoints.names):
        notes.append(f"{source_path} was trained on {source.num_keypoints} other keypoints; its "
                     f"heads are left as initialized")
    for name in ("input_size", "crop_mode", "padding", "sigma"):
        old, new = getattr(source, name), getattr(card, name)
        if name == "input_size":
            old, new = tuple(old), tuple(new)
        if old != new:
            notes.append(f"{source_path} was trained with {name} {old}; this run uses {new}")
    return notes


# ---------------------------------------------------------------------- where cards live
def metadata_path(model_path: str) -> str:
    """The readable copy beside a model: `model.keras` -> `model.json`; a SavedModel folder ->
    `folder/hourglass_metadata.json`."""
    model_path = model_path.rstrip("/")
    if os.path.isdir(model_path):
        return os.path.join(model_path, "hourglass_metadata.json")
    return os.path.splitext(model_path)[0] + ".json"


def _saved_model_card_path(folder: str) -> str:
    return os.path.join(folder, "assets.extra", CARD_MEMBER)


def embed_in_keras(path: str, card: ModelCard) -> None:
    """Add the card to a `.keras` archive (replacing none: call on a freshly saved file)."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(CARD_MEMBER, card.to_json())


def embed_in_saved_model(folder: str, card: ModelCard) -> None:
    os.makedirs(os.path.join(folder, "assets.extra"), exist_ok=True)
    with open(_saved_model_card_path(folder), "w", encoding="utf-8") as f:
        f.write(card.to_json())


def embed_in_tflite(data: bytes, card: ModelCard) -> bytes:
    """The flatbuffer with the card as its ``hourglass_card`` metadata entry (an earlier
    entry of that name is replaced)."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(card.to_json().encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name or b"").decode(errors="replace") != TFLITE_METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _tflite_card_text(path: str) -> Optional[str]:
    from tensorflow.lite.python import schema_py_generated as schema
    with open(path, "rb") as f:
        data = f.read()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode(errors="replace") == TFLITE_METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8")
    return None


def _embedded_card_text(path: str) -> Optional[str]:
    if os.path.isdir(path):
        inside = _saved_model_card_path(path)
        if os.path.isfile(inside):
            with open(inside, encoding="utf-8") as f:
                return f.read()
        return None
    if path.endswith(".keras") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if CARD_MEMBER in archive.namelist():
                return archive.read(CARD_MEMBER).decode("utf-8")
        return None
    if path.endswith(".tflite"):
        return _tflite_card_text(path)
    return None


def read_card(model_path: str) -> tuple[Optional[ModelCard], str]:
    """(card, where it came from): the card inside the file, else the json beside it (files
    written before cards were embedded), else (None, "none"). CardError names the file when a
    card is present but unreadable."""
    model_path = model_path.rstrip("/")
    try:
        text = _embedded_card_text(model_path)
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CardError(f"{model_path}: its embedded model card is unreadable ({e})") from e
    where = "inside"
    if text is None:
        beside = metadata_path(model_path)
        if not os.path.isfile(beside):
            return None, "none"
        with open(beside, encoding="utf-8") as f:
            text, where = f.read(), beside
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CardError(f"{model_path}: its model card ({where}) is not valid json ({e})") from e
    if not data.get("keypoint_names"):
        return None, "none"
    label = "embedded card" if where == "inside" else where
    return ModelCard.from_dict(data, f"{model_path} ({label})"), where


def write_card_beside(model_path: str, card: ModelCard) -> str:
    """The readable json copy beside the model."""
    path = metadata_path(model_path)
    atomic_write_json(path, card.to_dict())
    return path


def save_keras(model, path: str, card: Optional[ModelCard]) -> None:
    """model.save to a temporary name, the card added inside, then one rename: never a
    half-written `.keras` file, never a model without its card. The json copy is written
    beside it first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if card is not None:
        write_card_beside(path, card)
    with atomic_path(path) as tmp:
        model.save(tmp)
        if card is not None:
            embed_in_keras(tmp, card)
