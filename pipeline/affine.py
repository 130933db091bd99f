"""One affine per example: 3x3 matrices mapping ORIGINAL-image pixels -> CROP pixels.

Both frames use the convention of ``pipeline.coords`` (continuous coordinates, pixel centres
at +0.5). A crop matrix is composed as

    crop = V · F · T(W/2 + shift_x, H/2 + shift_y) · S · R · T(-center)

- T(-center): the person centre goes to the origin.
- R: rotation by ``rotation_deg``, positive = counter-clockwise as displayed (y points down).
- S: zoom ``min(W, H) / side`` with ``side = 200 · scale · padding`` (200 · scale and the
  padded side rounded to float32), so the crop window is the padded square widened to the
  model aspect W/H (``pipeline.coords.crop_size``).
- shift: translation in crop pixels.
- F, V: optional mirrors of the finished crop, x -> W - x and y -> H - y (no half-pixel
  shift in our convention): a flipped crop is exactly the mirror image of the unflipped one.

The image samplers read pixel indices (index i = our coordinate i + 0.5), so the image warps
conjugate the inverse matrix with a half-pixel shift. One image is warped from the window it
reads only (``source_window``; ``crop_window`` reads just that window, e.g. decodes just that
part of a JPEG): without rotation by ``tf.image.crop_and_resize``, with rotation by bilinear
gathers compiled with XLA (or ``ImageProjectiveTransformV3``), all at the same sample points.
All TF functions accept a leading batch dimension on the matrix ([..., 3, 3]). Matrices are
built only in TF (``crop_matrix``); the three float64 NumPy twins (``transform_points_np``,
``invert_np``, ``to_original_np``) map predictions back on the host, where COCO scoring needs
float64 (float32 costs up to 1e-4 px on a 640 px image).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipeline import coords

CROP_MODES = ("box", "frame")
ROTATED_SAMPLERS = ("xla", "projective")
# Pixel counts of a window that ``gather_window`` compiles for: about x1.5 apart, so a window
# is padded by less than half and a training run compiles a handful of shapes.
_BUCKETS = tuple(int(64 * 1.5 ** k) for k in range(38))     # 64 .. ~256M pixels


def frame_center_scale(image_size, padding: float, input_size: Sequence[int], zero=0.0):
    """Centre and scale whose crop window (``coords.crop_size``) is the whole image
    letterboxed to the model aspect ratio: centre = image centre, window height =
    max(w / aspect, h). ``image_size`` is (h, w) (tensor or numbers). TF tensors out.
    ``zero``: a float32 0 computed at run time, added to the divisors inside a TFLite model
    (its converter turns a division by a constant into a product with the rounded reciprocal,
    which rounds differently)."""
    in_h, in_w = int(input_size[0]), int(input_size[1])
    aspect = in_w / in_h
    hw = tf.cast(tf.convert_to_tensor(image_size), tf.float32)
    h, w = hw[0], hw[1]
    win_h = tf.maximum(w / (aspect + zero), h)
    win_w = win_h * aspect
    center = tf.stack([w / 2.0, h / 2.0])
    scale = tf.minimum(win_w, win_h) / (coords.PIXELS_PER_SCALE * padding + zero)
    return center, scale


def _check_mode(crop_mode: str, image_size) -> None:
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
    if crop_mode == "frame" and image_size is None:
        raise ValueError("crop_mode 'frame' needs image_size=(h, w) of the original image")


def crop_matrix(center, scale, padding: float, input_size: Sequence[int], rotation_deg=0.0,
                flip=False, shift=(0.0, 0.0), vertical_flip=False, crop_mode: str = "box",
                image_size=None, dtype: tf.DType = tf.float64) -> tf.Tensor:
    """float32 [3, 3] matrix: original px -> crop px (see the module docstring).

    ``crop_mode="frame"`` ignores ``center``/``scale`` and crops the whole image of
    ``image_size`` (h, w) letterboxed. ``flip``/``vertical_flip`` may be bool tensors.
    ``dtype``: the precision it is computed in; float32 inside graphs that have no float64
    (a TFLite model, ``export.pipeline_model``).
    """
    _check_mode(crop_mode, image_size)
    if crop_mode == "frame":
        center, scale = frame_center_scale(image_size, padding, input_size)
    in_h, in_w = float(input_size[0]), float(input_size[1])
    # The crop is that of the float32 square box around the centre (its corner and side
    # 200·scale in float32, the padded side too), so that a float32 box (x, y, w, h) names
    # every crop exactly (export.pipeline_model.box_crop_matrix computes the same matrix); the
    # translation W/2 - zoom·R·centre is (W/2·span - min(H, W)·R·centre) / span, with exact
    # products: the float32 matrix is the exact one rounded, even where the translation nearly
    # cancels. Both differ from the plain formula by float rounding only.
    side = tf.cast(tf.cast(coords.PIXELS_PER_SCALE * tf.cast(scale, dtype), tf.float32), dtype)
    span = tf.cast(tf.cast(padding * side, tf.float32), dtype)
    corner = tf.cast(tf.cast(tf.cast(center, dtype) - side / 2.0, tf.float32), dtype)
    center = corner + side / 2.0
    zoom = min(in_h, in_w) / span
    theta = tf.cast(rotation_deg, dtype) * (math.pi / 180.0)
    # R = [[cos, sin], [-sin, cos]] (counter-clockwise as displayed); linear part S·R.
    rotation = tf.reshape(tf.stack([tf.cos(theta), tf.sin(theta), -tf.sin(theta), tf.cos(theta)]), [2, 2])
    lin = rotation * zoom
    half = tf.constant([in_w / 2.0, in_h / 2.0], dtype) + tf.cast(shift, dtype)
    t = (half * span - min(in_h, in_w) * tf.linalg.matvec(rotation, tf.cast(center, dtype))) / span
    # Mirrors of the finished crop: x -> W - x, y -> H - y (row 0 / row 1 of the affine).
    mirror = tf.stack([tf.convert_to_tensor(flip), tf.convert_to_tensor(vertical_flip)])
    sign = tf.where(mirror, tf.constant(-1.0, dtype), tf.constant(1.0, dtype))
    t = tf.where(mirror, tf.constant([in_w, in_h], dtype) - t, t)
    top = tf.concat([lin * sign[:, tf.newaxis], t[:, tf.newaxis]], 1)
    return tf.cast(tf.concat([top, tf.constant([[0.0, 0.0, 1.0]], dtype)], 0), tf.float32)


def transform_points(matrix, points) -> tf.Tensor:
    """Apply affine ``matrix`` [..., 3, 3] to ``points`` [..., N, 2] (float32 out)."""
    matrix = tf.convert_to_tensor(matrix, tf.float32)
    points = tf.convert_to_tensor(points, tf.float32)
    lin = matrix[..., tf.newaxis, :2, :2]                   # [..., 1, 2, 2]
    t = matrix[..., tf.newaxis, :2, 2]                      # [..., 1, 2]
    return tf.reduce_sum(lin * points[..., tf.newaxis, :], -1) + t


def transform_points_np(matrix, points) -> np.ndarray:
    """NumPy twin of ``transform_points`` (float64)."""
    matrix = np.asarray(matrix, np.float64)
    points = np.asarray(points, np.float64)
    return points @ np.swapaxes(matrix[..., :2, :2], -1, -2) + matrix[..., np.newaxis, :2, 2]


def invert(matrix) -> tf.Tensor:
    """Exact inverse of affine ``matrix`` [..., 3, 3] (crop px -> original px), float32."""
    return tf.cast(_invert64(matrix), tf.float32)


def _invert64(matrix) -> tf.Tensor:
    """float64 inverse of affine ``matrix`` [..., 3, 3]."""
    m = tf.cast(tf.convert_to_tensor(matrix), tf.float64)
    lin = tf.linalg.inv(m[..., :2, :2])
    t = -tf.linalg.matvec(lin, m[..., :2, 2])
    top = tf.concat([lin, t[..., tf.newaxis]], -1)
    bottom = tf.broadcast_to(tf.constant([[0.0, 0.0, 1.0]], tf.float64),
                             tf.concat([tf.shape(m)[:-2], [1, 3]], 0))
    return tf.concat([top, bottom], -2)


def invert_np(matrix) -> np.ndarray:
    """NumPy twin of ``invert`` (float64)."""
    m = np.asarray(matrix, np.float64)
    lin_inv = np.linalg.inv(m[..., :2, :2])
    out = np.zeros(m.shape, np.float64)
    out[..., :2, :2] = lin_inv
    out[..., :2, 2] = -np.einsum("...ij,...j->...i", lin_inv, m[..., :2, 2])
    out[..., 2, 2] = 1.0
    return out


def to_original(matrix, crop_points) -> tf.Tensor:
    """Crop-pixel points [..., N, 2] -> original-image pixels, for crop ``matrix`` [..., 3, 3]
    (e.g. decoded heatmap coordinates and the eval label ``matrix``)."""
    return transform_points(invert(matrix), crop_points)


def to_original_np(matrix, crop_points) -> np.ndarray:
    """NumPy twin of ``to_original`` (float64)."""
    return transform_points_np(invert_np(matrix), crop_points)


def _sampling_params(matrix) -> tf.Tensor:
    """float64 [..., 6] (a, b, tx, c, d, ty): output pixel index (j, i) -> input pixel index
    (a·j + b·i + tx, c·j + d·i + ty), i.e. index = inv · (output index + 0.5) - 0.5."""
    inv = _invert64(matrix)[..., :2, :]                               # [..., 2, 3]
    t = inv[..., 2] + 0.5 * (inv[..., 0] + inv[..., 1]) - 0.5
    params = tf.concat([inv[..., :2], t[..., tf.newaxis]], -1)
    return tf.reshape(params, tf.concat([tf.shape(params)[:-2], [6]], 0))


def sampling_transform(matrix) -> tf.Tensor:
    """The 8 ``ImageProjectiveTransformV3`` parameters [..., 8] for crop ``matrix``: they map
    an OUTPUT pixel index to the INPUT pixel index it samples (index = coordinate - 0.5)."""
    params = _sampling_params(matrix)
    zero = tf.zeros_like(params[..., :2])
    return tf.cast(tf.concat([params, zero], -1), tf.float32)


def source_window(matrix, image_size, output_size: Sequence[int], margin: int = 1) -> tf.Tensor:
    """int32 [4] (y0, x0, y1, x1): the rows y0..y1-1 and columns x0..x1-1 of an image of
    ``image_size`` (h, w) that bilinear sampling of the crop of ``matrix`` [3, 3] can read,
    plus ``margin`` px, clamped to the image and at least one pixel. Warping that window
    with the matrix shifted by (x0, y0) gives the same crop as warping the whole image."""
    return _window(_sampling_params(matrix), image_size, output_size, margin)


def _window(params, image_size, output_size: Sequence[int], margin: int) -> tf.Tensor:
    return _window_and_end(params, image_size, output_size, margin)[0]


def _window_and_end(params, image_size, output_size: Sequence[int], margin: int):
    """(``source_window``, int32 [2] (y1, x1) that window would end at were the image
    unbounded at its bottom and right: it depends on the matrix alone, not on the image size)."""
    last = tf.constant([[0.0, 0.0], [output_size[1] - 1.0, 0.0], [0.0, output_size[0] - 1.0],
                        [output_size[1] - 1.0, output_size[0] - 1.0]], tf.float64)
    # The sampled points of the 4 corner pixels bound those of all pixels (affine map).
    affine_2x3 = tf.reshape(params, [2, 3])
    xy = tf.linalg.matmul(last, affine_2x3[:, :2], transpose_b=True) + affine_2x3[:, 2]  # [4, 2]
    size = tf.cast(tf.reverse(tf.convert_to_tensor(image_size), [0]), tf.float64)        # (w, h)
    # Pixels floor(v) and floor(v) + 1 are read; clip in float before the int cast.
    lo = tf.clip_by_value(tf.floor(tf.reduce_min(xy, 0)) - margin, 0.0, size - 1.0)
    end = tf.maximum(tf.floor(tf.reduce_max(xy, 0)) + 2.0 + margin, lo + 1.0)
    hi = tf.minimum(end, size)
    x0y0x1y1 = tf.cast(tf.concat([lo, hi], 0), tf.int32)
    return tf.gather(x0y0x1y1, [1, 0, 3, 2]), tf.reverse(tf.cast(end, tf.int32), [0])


def crop_float(image, matrix, output_size: Sequence[int], fill_value: float = 0.0) -> tf.Tensor:
    """Float32 crop [h, w, C] of ``image`` [H, W, C] (any real dtype, e.g. uint8) for
    ``matrix`` [3, 3]: bilinear, constant fill, the pixel convention of the module docstring.
    Only the window the crop reads is sliced out and converted (``crop_window``)."""
    image = tf.convert_to_tensor(image)
    out = crop_window(lambda w: image[w[0]:w[2], w[1]:w[3]], tf.shape(image)[:2], matrix,
                      output_size, fill_value)
    return tf.ensure_shape(out, [int(output_size[0]), int(output_size[1]), image.shape[-1]])


def crop_window(read_window, image_size, matrix, output_size: Sequence[int],
                fill_value: float = 0.0, rotated: str = "xla", unbounded_end: bool = True) -> tf.Tensor:
    """``crop_float`` of an image of ``image_size`` (h, w) that is read only through
    ``read_window(window)`` -> pixels [y1 - y0, x1 - x0, C], for the ``source_window``
    (y0, x0, y1, x1) of ``matrix`` (e.g. ``pipeline.decoder.read_window``, which decodes just
    that part of a JPEG).

    A crop without rotation (no off-diagonal terms: scale, translation, flips) is sampled by
    ``resize_window`` (``tf.image.crop_and_resize``), a rotated one by ``gather_window``
    (``rotated="xla"``: bilinear gathers compiled by XLA, ~2x faster on CPU) or
    ``project_window`` (``"projective"``: ``ImageProjectiveTransformV3``). All sample the
    same points with the same constant fill, so they agree to float rounding
    (tests/test_affine.py). ``unbounded_end``: a crop without rotation is sampled from the
    window as if the image went on (with the fill) past its bottom and right, so its pixels
    do not depend on where the image ends, bit for bit (the one-file pipeline,
    ``export.pipeline_model.sample_crop``, computes the same ones from a padded frame); it
    costs ~0.4 ms more for a crop that reaches past the end. False: the window clipped at
    the image, as before (training crops need no such agreement)."""
    if rotated not in ROTATED_SAMPLERS:
        raise ValueError(f"rotated must be one of {ROTATED_SAMPLERS}, got {rotated!r}")
    params = _sampling_params(matrix)
    window, end = _window_and_end(params, image_size, output_size, margin=1)
    part = read_window(window)
    params = params - tf.cast(tf.stack([0, 0, window[1], 0, 0, window[0]]), tf.float64)  # M · T(x0, y0)
    axis_aligned = tf.logical_and(tf.equal(params[1], 0.0), tf.equal(params[3], 0.0))
    if min(int(output_size[0]), int(output_size[1])) < 2:   # crop_and_resize needs 2+ samples
        axis_aligned = tf.constant(False)
    rotated_window = gather_window if rotated == "xla" else project_window
    size = end - window[:2] if unbounded_end else None
    out = tf.cond(axis_aligned, lambda: resize_window(part, params, output_size, fill_value, size),
                  lambda: rotated_window(part, params, output_size, fill_value))
    return tf.ensure_shape(out, [int(output_size[0]), int(output_size[1]), part.shape[-1]])


def gather_window(image, params, output_size: Sequence[int], fill_value: float = 0.0) -> tf.Tensor:
    """``project_window`` by four gathers and a bilinear blend in one XLA-compiled function
    (on the CPU, where tf.data runs). The pixels, flattened to [h·w, C], are zero-padded to
    a bucket length (``_BUCKETS``), so XLA compiles once per bucket (~0.1 s each, cached for
    the process) instead of once per window shape; the padding is never read (bounds are
    the real size). Windows past the largest bucket take ``project_window``."""
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels is None:   # the compiled sampler needs the channel count
        return project_window(image, params, output_size, fill_value)
    size = tf.shape(image)[:2]
    count = size[0] * size[1]
    buckets = tf.constant(_BUCKETS, tf.int32)
    bucket = tf.gather(buckets, tf.minimum(tf.searchsorted(buckets, count[tf.newaxis])[0],
                                           len(_BUCKETS) - 1))

    def gathered():
        flat = tf.pad(tf.reshape(image, [-1, channels]), tf.stack([[0, bucket - count], [0, 0]]))
        sampler = _xla_sampler(int(output_size[0]), int(output_size[1]), channels, image.dtype)
        with tf.device("/CPU:0"):
            return sampler(flat, size, tf.cast(params, tf.float32), tf.constant(fill_value, tf.float32))

    return tf.cond(count <= bucket, gathered,
                   lambda: project_window(image, params, output_size, fill_value))


@functools.lru_cache(maxsize=None)
def _xla_sampler(out_h: int, out_w: int, channels: int, dtype: tf.DType):
    """XLA function (pixels [n >= h·w, C] row-major, size int32 [2] (h, w), params float32
    [6], fill float32 []) -> float32 [out_h, out_w, C], bilinear with constant fill."""

    @tf.function(jit_compile=True, input_signature=[
        tf.TensorSpec([None, channels], dtype), tf.TensorSpec([2], tf.int32),
        tf.TensorSpec([6], tf.float32), tf.TensorSpec([], tf.float32)])
    def sample(pixels, size, params, fill):
        h, w = size[0], size[1]
        j = tf.range(out_w, dtype=tf.float32)[tf.newaxis, :]
        i = tf.range(out_h, dtype=tf.float32)[:, tf.newaxis]
        x = params[0] * j + params[1] * i + params[2]
        y = params[3] * j + params[4] * i + params[5]
        x0, y0 = tf.floor(x), tf.floor(y)
        fx, fy = (x - x0)[..., tf.newaxis], (y - y0)[..., tf.newaxis]
        col, row = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)

        def read(r, c):
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            index = tf.clip_by_value(r, 0, h - 1) * w + tf.clip_by_value(c, 0, w - 1)
            return tf.where(inside[..., tf.newaxis], tf.cast(tf.gather(pixels, index), tf.float32), fill)

        top = read(row, col) * (1.0 - fx) + read(row, col + 1) * fx
        bottom = read(row + 1, col) * (1.0 - fx) + read(row + 1, col + 1) * fx
        return top * (1.0 - fy) + bottom * fy

    return sample


def project_window(image, params, output_size: Sequence[int], fill_value: float = 0.0) -> tf.Tensor:
    """Float32 [h, w, C]: ``image`` [H, W, C] sampled by ``ImageProjectiveTransformV3`` at the
    pixel indices of ``params`` (float64 [6] a, b, tx, c, d, ty; see ``_sampling_params``)."""
    transform = tf.concat([tf.cast(params, tf.float32), tf.zeros([2], tf.float32)], 0)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.constant([int(output_size[0]), int(output_size[1])], tf.int32),
        fill_value=tf.constant(fill_value, tf.float32), interpolation="BILINEAR",
        fill_mode="CONSTANT")[0]


def resize_window(image, params, output_size: Sequence[int], fill_value: float = 0.0,
                  size=None) -> tf.Tensor:
    """``project_window`` for axis-aligned ``params`` (b = c = 0) with
    ``tf.image.crop_and_resize``, which samples box_start + i · (box_end - box_start) /
    (size - 1) in pixel indices; reversed boxes are the flips. Its edge rule (all fill
    beyond the first/last pixel) differs from the projective op (a blend with the fill up
    to one pixel out), so the image gets a one-pixel border of ``fill_value`` first.
    ``size`` (h, w), at least the image's: the image is filled to that size at its bottom and
    right first. ``crop_window`` passes the window as it would be were the image unbounded
    there, so the float32 sample points (which depend on the padded size) do not depend on
    where the image ends: ``export.pipeline_model.sample_crop``, which cannot know it,
    computes the very same ones."""
    out_h, out_w = int(output_size[0]), int(output_size[1])
    # Pad in the image dtype when the fill fits (cheaper), then float: crop_and_resize reads
    # float32 about 25% faster than it converts uint8 itself.
    src = image if _holds(image.dtype, fill_value) else tf.cast(image, tf.float32)
    fill = tf.cast(fill_value, src.dtype)
    border = functools.partial(tf.pad, paddings=[[1, 1], [1, 1], [0, 0]], constant_values=fill)
    if size is None:
        padded = border(src)
    else:   # tf.pad is ~20x slower per filled value than a copy: concat when the fill is large
        grow = tf.convert_to_tensor(size, tf.int32) - tf.shape(src)[:2]
        padded = tf.cond(tf.reduce_any(grow > 0), lambda: _fill_end(src, grow, fill),
                         lambda: border(src))
    padded = tf.cast(padded, tf.float32)
    last = tf.cast(tf.shape(padded)[:2], tf.float64) - 1.0      # >= 2: box normalizer
    a, tx, d, ty = params[0], params[2] + 1.0, params[4], params[5] + 1.0
    box = tf.stack([ty / last[0], tx / last[1], (ty + d * (out_h - 1)) / last[0],
                    (tx + a * (out_w - 1)) / last[1]])
    return tf.image.crop_and_resize(padded[tf.newaxis], tf.cast(box, tf.float32)[tf.newaxis], [0],
                                    (out_h, out_w), extrapolation_value=fill_value)[0]


def _fill_end(image, grow, fill) -> tf.Tensor:
    """``image`` [h, w, C] with a one-pixel border of ``fill`` and ``grow`` (rows, columns)
    more of it at its bottom and right, by concatenation."""
    h, w, channels = tf.shape(image)[0], tf.shape(image)[1], image.shape[-1] or tf.shape(image)[2]
    rows = tf.concat([tf.fill(tf.stack([1, w, channels]), fill), image,
                      tf.fill(tf.stack([1 + grow[0], w, channels]), fill)], 0)
    tall = h + 2 + grow[0]
    return tf.concat([tf.fill(tf.stack([tall, 1, channels]), fill), rows,
                      tf.fill(tf.stack([tall, 1 + grow[1], channels]), fill)], 1)


def _holds(dtype: tf.DType, value: float) -> bool:
    """Whether ``dtype`` represents ``value`` exactly (floats always, for our purposes)."""
    if dtype.is_floating:
        return True
    return dtype.is_integer and float(value) == int(value) and dtype.min <= value <= dtype.max


def warp_image(image, matrix, output_size: Sequence[int], fill_value: float = 0.0) -> tf.Tensor:
    """Resample ``image`` [H, W, C] or [B, H, W, C] into the crop of ``matrix`` ([3, 3] or
    [B, 3, 3]) with bilinear interpolation and constant fill. Output [h, w, C] (or batched)
    of ``output_size`` (h, w). Float images stay float32; uint8 images are rounded and
    clipped back to uint8. One image: ``crop_float``; a batch: one
    ``ImageProjectiveTransformV3`` call."""
    image = tf.convert_to_tensor(image)
    in_dtype = image.dtype
    if image.shape.rank == 4:
        transforms = sampling_transform(matrix)
        if transforms.shape.rank == 1:
            transforms = transforms[tf.newaxis]
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(image, tf.float32), transforms=transforms,
            output_shape=tf.constant([int(output_size[0]), int(output_size[1])], tf.int32),
            fill_value=tf.constant(fill_value, tf.float32), interpolation="BILINEAR",
            fill_mode="CONSTANT")
    else:
        out = crop_float(image, matrix, output_size, fill_value)
    return to_uint8(out) if in_dtype == tf.uint8 else out


def to_uint8(image) -> tf.Tensor:
    """Round (half up) and clip a float image to uint8 0-255: ``saturate_cast(image + 0.5)``
    in one pass (QuantizeV2 over the range 0..255; tests/test_affine.py checks the two agree)."""
    quantized = tf.raw_ops.QuantizeV2(input=image, min_range=0.0, max_range=255.0, T=tf.quint8,
                                      mode="MIN_COMBINED", round_mode="HALF_AWAY_FROM_ZERO")
    return tf.bitcast(quantized.output, tf.uint8)


__all__ = [
    "CROP_MODES", "ROTATED_SAMPLERS", "frame_center_scale", "crop_matrix",
    "transform_points", "transform_points_np", "invert", "invert_np",
    "to_original", "to_original_np", "sampling_transform", "source_window", "crop_float",
    "crop_window", "gather_window", "project_window", "resize_window", "warp_image", "to_uint8",
]
