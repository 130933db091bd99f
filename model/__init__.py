"""Stacked hourglass models and their heatmap loss.

`build_hourglass(num_keypoints, num_stacks, num_channels, mobile, input_size)` -> Functional
`keras.Model` (RGB 0-255 in, list of per-stack float32 heatmaps out);
`hourglass_config(model)` reads those arguments back from any built or loaded model;
`as_stack_list(model(x))` is the per-stack list also for one stack (Keras unwraps it);
`heatmap_loss` / `heatmap_loss_per_example` in `model.loss`.
"""
from model.hourglass import (  # noqa: F401
    HOURGLASS_POOLINGS,
    OUTPUT_STRIDE,
    SIZE_MULTIPLE,
    HourglassConfig,
    as_stack_list,
    build_hourglass,
    count_trainable_parameters,
    hourglass_config,
)
from model.loss import heatmap_loss, heatmap_loss_per_example  # noqa: F401
