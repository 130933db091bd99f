"""Weighted heatmap mean squared error, summed over the stacks (intermediate supervision).

Reduction, exactly: for example b and stack s,

    loss_s[b] = mean over (y, x, k) of  weights[b, k] * (predictions_s[b, y, x, k]
                                                        - heatmaps[b, y, x, k]) ** 2

i.e. the sum divided by h * w * K (NOT by the sum of the weights: a keypoint with weight 0
contributes 0 but still counts in K). The per-example total is sum_s loss_s[b].

``foreground_weight`` f > 0 multiplies each squared error by ``1 + f * heatmaps[b, y, x, k]``:
pixels under a target's Gaussian weigh up to 1 + f times the background (the weight map of
the Adaptive Wing loss, Wang et al. 2019, made soft). A from-scratch network then leaves
the all-zero plateau sooner; f = 0 is the plain MSE above.

- `heatmap_loss_per_example` returns those [B] vectors: in a `tf.distribute` custom loop
  reduce them with `tf.nn.compute_average_loss(total, global_batch_size=...)` (sum over the
  replica's examples / global batch size), so the replicas' gradients add up correctly.
- `heatmap_loss` returns their mean over the batch (one replica, or eager use).

Everything is computed in float32, whatever the predictions' dtype.
"""
from __future__ import annotations

from typing import Sequence, Union

import tensorflow as tf

Predictions = Union[tf.Tensor, Sequence[tf.Tensor]]


def _as_list(predictions: Predictions) -> list:
    if isinstance(predictions, (list, tuple)):
        if not predictions:
            raise ValueError("predictions: expected one heatmap tensor per stack, got none.")
        return list(predictions)
    return [predictions]


def _check_shapes(heatmaps, weights, prediction, index):
    if heatmaps.shape.rank != 4:
        raise ValueError(f"heatmaps: expected [B, h, w, K], got shape {heatmaps.shape}.")
    if weights.shape.rank != 2:
        raise ValueError(f"weights: expected [B, K], got shape {weights.shape}.")
    if not prediction.shape.is_compatible_with(heatmaps.shape):
        raise ValueError(
            f"predictions[{index}] has shape {prediction.shape} but heatmaps {heatmaps.shape}: "
            f"the model's heatmap size or keypoint count does not match the labels.")
    if not weights.shape.is_compatible_with([heatmaps.shape[0], heatmaps.shape[-1]]):
        raise ValueError(
            f"weights shape {weights.shape} does not match heatmaps {heatmaps.shape} "
            f"(expected [B, K]).")


def heatmap_loss_per_example(heatmaps, weights, predictions: Predictions,
                             foreground_weight: float = 0.0):
    """Per-example weighted MSE: returns (total [B], [loss_s [B] for each stack]).

    heatmaps: targets [B, h, w, K]; weights: [B, K] (broadcast over h, w); predictions: one
    [B, h, w, K] tensor or a list of them, one per stack. See the module docstring.
    """
    if foreground_weight < 0:
        raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}")
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    weights = tf.convert_to_tensor(weights, tf.float32)
    predictions = [tf.cast(p, tf.float32) for p in _as_list(predictions)]
    for index, prediction in enumerate(predictions):
        _check_shapes(heatmaps, weights, prediction, index)
    pixel_weights = weights[:, tf.newaxis, tf.newaxis, :]
    if foreground_weight:
        pixel_weights = pixel_weights * (1.0 + foreground_weight * heatmaps)
    per_stack = []
    for prediction in predictions:
        squared = tf.square(prediction - heatmaps) * pixel_weights
        per_stack.append(tf.reduce_mean(squared, axis=[1, 2, 3]))
    return tf.add_n(per_stack), per_stack


def heatmap_loss(heatmaps, weights, predictions: Predictions, foreground_weight: float = 0.0):
    """Batch-mean weighted MSE summed over stacks: returns (total [], [loss_s [] per stack]).

    Equal to the batch mean of `heatmap_loss_per_example`; see the module docstring.
    """
    _, per_stack = heatmap_loss_per_example(heatmaps, weights, predictions, foreground_weight)
    per_stack = [tf.reduce_mean(loss) for loss in per_stack]
    return tf.add_n(per_stack), per_stack

