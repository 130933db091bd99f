"""Stacked hourglass networks (Newell et al. 2016) as plain Keras 3 Functional models.

`build_hourglass(...)` returns a `keras.Model` with one input, RGB 0-255 [B, H, W, 3] (uint8
or float; the model's first layers cast and rescale it to [-1, 1]), and a LIST of outputs,
one heatmap tensor [B, H/4, W/4, K] float32 per stack, named `stack_1_heatmaps`,
`stack_2_heatmaps`, ... (intermediate supervision; the last one is the prediction).

The model uses only built-in Keras layers (no Lambda, no custom class), so a `.keras` file
loads with `keras.models.load_model(path, safe_mode=True)`. The builder's arguments are not
stored as extra metadata: `hourglass_config(model)` reads them back from the graph itself
(input shape, number and width of outputs, a named layer's filters, presence of depthwise
convolutions), so they survive any save/load round trip.
"""
from __future__ import annotations

import dataclasses

import keras
from keras import layers

from model.blocks import apply_head_block, apply_hourglass_block, apply_stem_block, fuse_batch_norm_training

OUTPUT_STRIDE = 4          # heatmap cell = 4x4 input pixels
HOURGLASS_POOLINGS = 3     # 1/4 -> 1/32 inside each hourglass
SIZE_MULTIPLE = 32         # stem conv (2) * stem pool (2) * hourglass poolings (2**3)
INPUT_NAME = "image"


@dataclasses.dataclass(frozen=True)
class HourglassConfig:
    """The builder's arguments, validated. `build_hourglass(**dataclasses.asdict(cfg))`."""

    num_keypoints: int = 17
    num_stacks: int = 2
    num_channels: int = 256
    mobile: bool = False
    input_size: tuple[int, int] = (256, 256)

    def __post_init__(self):
        _check_positive_int("num_keypoints", self.num_keypoints)
        _check_positive_int("num_stacks", self.num_stacks)
        _check_positive_int("num_channels", self.num_channels)
        if self.num_channels % 4:
            raise ValueError(
                f"num_channels={self.num_channels}: must be a multiple of 4 (the stem's first "
                f"bottleneck works at num_channels/4); use 256 (standard) or 128 (tiny).")
        if not isinstance(self.mobile, bool):
            raise ValueError(f"mobile={self.mobile!r}: must be True or False.")
        size = tuple(self.input_size) if isinstance(self.input_size, (tuple, list)) else None
        if size is None or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            raise ValueError(
                f"input_size={self.input_size!r}: must be (height, width), two positive ints.")
        if any(v % SIZE_MULTIPLE for v in size):
            hint = tuple(max(SIZE_MULTIPLE, round(v / SIZE_MULTIPLE) * SIZE_MULTIPLE) for v in size)
            raise ValueError(
                f"input_size={size} (height, width): both must be multiples of {SIZE_MULTIPLE}, "
                f"because the network halves the resolution 5 times (stride-2 stem conv, stem "
                f"max-pool, {HOURGLASS_POOLINGS} hourglass poolings) and upsamples back; "
                f"use e.g. {hint}.")
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(h, w) of every output heatmap."""
        return (self.input_size[0] // OUTPUT_STRIDE, self.input_size[1] // OUTPUT_STRIDE)

    @property
    def model_name(self) -> str:
        """A readable model name, e.g. `hourglass_s2_c128_mobile_k17_256x256` (not parsed)."""
        mobile = "_mobile" if self.mobile else ""
        h, w = self.input_size
        return (f"hourglass_s{self.num_stacks}_c{self.num_channels}{mobile}"
                f"_k{self.num_keypoints}_{h}x{w}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name, value):
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive int.")


def build_hourglass(num_keypoints: int = 17, num_stacks: int = 2, num_channels: int = 256,
                    mobile: bool = False, input_size: tuple[int, int] = (256, 256)) -> keras.Model:
    """Builds a stacked hourglass; raises ValueError on invalid arguments.

    num_keypoints: heatmap channels K. num_stacks: hourglasses, one output each.
    num_channels: feature width (256 standard, 128 "tiny"). mobile: 3x3 and 7x7 convolutions
    become depthwise-separable. input_size: (height, width), multiples of 32.
    Returns a Functional `keras.Model`: RGB 0-255 [B, H, W, 3] -> list of num_stacks float32
    heatmaps [B, H/4, W/4, K] named `stack_{i}_heatmaps` (i from 1). `model.outputs` is always
    that list, but Keras unwraps a one-element list when the model is CALLED (or predicts):
    with num_stacks=1 wrap the result in `as_stack_list(...)`.
    """
    config = HourglassConfig(num_keypoints=num_keypoints, num_stacks=num_stacks,
                             num_channels=num_channels, mobile=mobile, input_size=input_size)
    height, width = config.input_size
    image = keras.Input(shape=(height, width, 3), dtype="float32", name=INPUT_NAME)
    # RGB 0-255 -> [-1, 1]; Rescaling casts its input (uint8 too) to its compute dtype.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(image)
    x = apply_stem_block(x, config.num_channels, config.mobile, name="stem")

    outputs = []
    for index in range(1, config.num_stacks + 1):
        name = f"stack_{index}"
        features = apply_hourglass_block(x, config.num_channels, HOURGLASS_POOLINGS,
                                         config.mobile, name=f"{name}_hourglass")
        x, heatmaps = apply_head_block(x, features, config.num_keypoints, config.num_channels,
                                       is_last=index == config.num_stacks, name=name)
        outputs.append(heatmaps)
    return fuse_batch_norm_training(keras.Model(image, outputs, name=config.model_name))


def as_stack_list(outputs) -> list:
    """A model call's result as the list of per-stack heatmaps, whatever num_stacks is.

    Keras returns a bare tensor (not a one-element list) for a one-output model; this puts it
    back in a list and leaves lists and tuples of several stacks as a list.
    """
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def hourglass_config(model: keras.Model) -> HourglassConfig:
    """The builder arguments of a model made by `build_hourglass` (also after save/load).

    Read from the graph: input (H, W), number of outputs, output channels, the filters of
    `stem_block3_3_conv` (always the last 1x1 conv of the stem, width num_channels) and
    whether any DepthwiseConv2D exists. Raises ValueError for another kind of model.
    """
    try:
        num_channels = model.get_layer("stem_block3_3_conv").filters
    except ValueError as error:
        raise ValueError(
            f"model {model.name!r} was not built by build_hourglass (no layer "
            f"'stem_block3_3_conv').") from error
    outputs = model.outputs
    mobile = any(isinstance(layer, layers.DepthwiseConv2D) for layer in model.layers)
    return HourglassConfig(
        num_keypoints=int(outputs[0].shape[-1]), num_stacks=len(outputs),
        num_channels=int(num_channels), mobile=mobile,
        input_size=(int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2])))


def count_trainable_parameters(model: keras.Model) -> int:
    """Number of trainable scalars (BatchNorm moving statistics excluded)."""
    return int(sum(int(keras.ops.size(w)) for w in model.trainable_weights))
