"""Building blocks of the stacked hourglass, as small `apply_*_block` functions.

Every function takes a Keras tensor and returns one, creating layers whose names all start
with the `name` it is given, so that a layer can be found by name in any variant
(`model.get_layer("stack_1_heatmaps")`, `"stem_block3_3_conv"`, ...).

Rules kept everywhere:
- Convolution -> BatchNormalization -> ReLU, convolutions feeding a BatchNorm have no bias, so
  the TFLite converter folds every BatchNorm into the convolution before it.
- `mobile=True` replaces only spatial (k > 1) convolutions by DepthwiseConv2D -> BN -> ReLU ->
  1x1 Conv2D -> BN -> ReLU; 1x1 convolutions stay plain Conv2D (no "separable 1x1").
- The last BatchNorm of every residual branch starts with gamma = 0, so each residual block
  starts as the identity (it keeps the initial outputs, hence the initial loss, small).
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

# PyTorch-style statistics: moving averages settle within ~50 steps, which matters for
# the short trainings of small custom datasets.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# In mobile mode the 7x7 stem is depthwise over the 3 RGB channels; each channel gets this
# many 7x7 filters before the 1x1 projection to 64 channels.
STEM_DEPTH_MULTIPLIER = 8
STEM_CHANNELS = 64


def _batch_norm(x, zero_gamma, name):
    return layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones", name=name)(x)


def fuse_batch_norm_training(model: keras.Model) -> keras.Model:
    """Makes every BatchNormalization of `model` compute its TRAINING forward pass with TF's
    fused kernel (FusedBatchNormV3: one op and its gradient instead of Keras 3's moments and
    arithmetic, about 1.3x faster training steps on CPU); outputs, gradients and moving
    statistics are Keras' own (moving variance from the biased batch variance, as Keras).
    Inference and the saved file are untouched: the layers stay Keras' BatchNormalization
    (only this instance's `call` is wrapped), so `.keras` files load without this project and
    the TFLite converter folds them as before. float32 only; other dtypes, masks and
    frozen layers take Keras' path. Returns `model`."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization) and not layer.renorm:
            layer.call = _fused_training_call(layer, layer.call)
    return model


def _fused_training_call(layer, keras_call):
    def call(inputs, training=None, mask=None):
        if not (training and layer.trainable) or mask is not None or inputs.dtype != tf.float32 \
                or layer.gamma is None or layer.beta is None \
                or layer.axis not in (-1, len(inputs.shape) - 1) or len(inputs.shape) != 4:
            return keras_call(inputs, training=training, mask=mask)
        outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.convert_to_tensor(layer.gamma), offset=tf.convert_to_tensor(layer.beta),
            mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=layer.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # the kernel returns the unbiased variance (n / (n - 1)); Keras keeps the biased one
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * tf.maximum(count - 1.0, 1.0) / count
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs
    return call


def apply_conv_bn(x, filters, kernel_size=1, strides=1, relu=True, zero_gamma=False, *, name):
    """Conv2D (no bias) -> BN -> optional ReLU. Layers: `{name}_conv`, `_bn`, `_relu`."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = _batch_norm(x, zero_gamma, f"{name}_bn")
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def apply_separable_conv_bn(x, filters, kernel_size, strides=1, depth_multiplier=1, *, name):
    """DepthwiseConv2D -> BN -> ReLU -> 1x1 Conv2D -> BN -> ReLU.

    Layers: `{name}_dwconv`, `_dwbn`, `_dwrelu`, `_pwconv`, `_pwbn`, `_relu`.
    """
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same",
                               depth_multiplier=depth_multiplier, use_bias=False,
                               name=f"{name}_dwconv")(x)
    x = _batch_norm(x, False, f"{name}_dwbn")
    x = layers.ReLU(name=f"{name}_dwrelu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_pwconv")(x)
    x = _batch_norm(x, False, f"{name}_pwbn")
    return layers.ReLU(name=f"{name}_relu")(x)


def apply_spatial_conv_bn(x, filters, kernel_size, strides=1, mobile=False, depth_multiplier=1, *,
                          name):
    """A k x k convolution with BN and ReLU: plain, or depthwise-separable when `mobile`."""
    if mobile:
        return apply_separable_conv_bn(x, filters, kernel_size, strides, depth_multiplier,
                                       name=name)
    return apply_conv_bn(x, filters, kernel_size, strides, name=name)


def apply_bottleneck_block(x, filters, mobile=False, *, name):
    """Residual bottleneck: 1x1 (filters/2) -> 3x3 (filters/2) -> 1x1 (filters), + skip, ReLU.

    The skip is the identity when the channel count is unchanged, else a 1x1 Conv2D + BN
    (`{name}_0_*`). Residual branch layers: `{name}_1_*`, `{name}_2_*`, `{name}_3_*`; then
    `{name}_add` and `{name}_out` (ReLU). The branch's last BN starts with gamma = 0.
    """
    if x.shape[-1] == filters:
        skip = x
    else:
        skip = apply_conv_bn(x, filters, 1, relu=False, name=f"{name}_0")
    y = apply_conv_bn(x, filters // 2, 1, name=f"{name}_1")
    y = apply_spatial_conv_bn(y, filters // 2, 3, mobile=mobile, name=f"{name}_2")
    y = apply_conv_bn(y, filters, 1, relu=False, zero_gamma=True, name=f"{name}_3")
    y = layers.Add(name=f"{name}_add")([skip, y])
    return layers.ReLU(name=f"{name}_out")(y)


def apply_stem_block(x, num_channels, mobile=False, *, name="stem"):
    """Image (already normalized) -> 1/4 resolution, `num_channels` channels.

    7x7 stride-2 convolution to 64 channels, bottleneck to C/2, 2x2 max-pool, bottleneck
    (C/2), bottleneck (C). Layers: `{name}_conv*`, `{name}_block1..3_*`, `{name}_pool`.
    """
    x = apply_spatial_conv_bn(x, STEM_CHANNELS, 7, strides=2, mobile=mobile,
                              depth_multiplier=STEM_DEPTH_MULTIPLIER, name=f"{name}_conv")
    x = apply_bottleneck_block(x, num_channels // 2, mobile, name=f"{name}_block1")
    x = layers.MaxPooling2D(2, strides=2, name=f"{name}_pool")(x)
    x = apply_bottleneck_block(x, num_channels // 2, mobile, name=f"{name}_block2")
    return apply_bottleneck_block(x, num_channels, mobile, name=f"{name}_block3")


def apply_hourglass_block(x, num_channels, num_poolings=3, mobile=False, *, name):
    """One hourglass: `num_poolings` 2x2 poolings down and nearest upsamplings back up.

    At each level l (0 = input resolution) a bottleneck `{name}_level{l}_down` runs before
    the pooling and a bottleneck `{name}_level{l}_skip` keeps that resolution; after the
    deeper levels come back up, nearest 2x upsampling + `Add` with the skip and a bottleneck
    `{name}_level{l}_merge`. The lowest level has a skip bottleneck `{name}_bottom_skip` and
    three bottlenecks `{name}_bottom1..3`. With 3 poolings: 4 + 4 + 3 * 2 = 14 bottlenecks.
    """
    return _apply_hourglass_level(x, num_channels, 0, num_poolings, mobile, name)


def _apply_hourglass_level(x, num_channels, level, num_poolings, mobile, name):
    prefix = f"{name}_level{level}"
    down = apply_bottleneck_block(x, num_channels, mobile, name=f"{prefix}_down")
    if level == num_poolings:
        skip = apply_bottleneck_block(down, num_channels, mobile, name=f"{name}_bottom_skip")
        y = down
        for i in range(1, 4):
            y = apply_bottleneck_block(y, num_channels, mobile, name=f"{name}_bottom{i}")
        return layers.Add(name=f"{name}_bottom_add")([skip, y])
    skip = apply_bottleneck_block(down, num_channels, mobile, name=f"{prefix}_skip")
    low = layers.MaxPooling2D(2, strides=2, name=f"{prefix}_pool")(down)
    low = _apply_hourglass_level(low, num_channels, level + 1, num_poolings, mobile, name)
    up = apply_nearest_upsample_2x(low, name=f"{prefix}_upsample")
    merged = layers.Add(name=f"{prefix}_add")([skip, up])
    return apply_bottleneck_block(merged, num_channels, mobile, name=f"{prefix}_merge")


def apply_nearest_upsample_2x(x, *, name):
    """Nearest-neighbour 2x upsampling from two (Concatenate, Reshape) pairs: the values of
    UpSampling2D, with a gradient XLA compiles on CPU and GPU (ResizeNearestNeighborGrad is
    TPU-only) and four plain TFLite ops (UpSampling2D's `repeat`s take twelve)."""
    _, h, w, c = x.shape
    wide = layers.Concatenate(axis=-1, name=f"{name}_cols")([x, x])           # [h, w, 2c]
    wide = layers.Reshape((h, 2 * w, c), name=f"{name}_cols_reshape")(wide)   # [h, 2w, c]
    tall = layers.Concatenate(axis=2, name=f"{name}_rows")([wide, wide])      # [h, 4w, c]
    return layers.Reshape((2 * h, 2 * w, c), name=f"{name}_rows_reshape")(tall)


def apply_head_block(stack_input, features, num_keypoints, num_channels, is_last, *, name):
    """Heads of one stack: returns (next stack's input or None when `is_last`, heatmaps).

    `{name}_head` 1x1 Conv + BN + ReLU; `{name}_heatmaps` linear 1x1 Conv (with bias) to
    `num_keypoints` channels, always float32 (the model's output, also under a mixed
    policy). Unless last: next input = `{name}_feature_remap`(head) +
    `{name}_heatmap_remap`(heatmaps) + stack_input (`{name}_next`).
    """
    head = apply_conv_bn(features, num_channels, 1, name=f"{name}_head")
    heatmaps = layers.Conv2D(num_keypoints, 1, padding="same", dtype="float32",
                             name=f"{name}_heatmaps")(head)
    if is_last:
        return None, heatmaps
    remapped_features = layers.Conv2D(num_channels, 1, padding="same",
                                      name=f"{name}_feature_remap")(head)
    # One bias for the sum is enough: the heatmap remap has none.
    remapped_heatmaps = layers.Conv2D(num_channels, 1, padding="same", use_bias=False,
                                      name=f"{name}_heatmap_remap")(heatmaps)
    next_input = layers.Add(name=f"{name}_next")([stack_input, remapped_features,
                                                  remapped_heatmaps])
    return next_input, heatmaps


__all__ = [
    "apply_conv_bn", "apply_separable_conv_bn", "apply_spatial_conv_bn",
    "apply_bottleneck_block", "apply_stem_block", "apply_hourglass_block", "apply_head_block",
]
