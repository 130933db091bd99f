"""Heatmap codec: keypoints (crop px) <-> Gaussian heatmaps, one pixel convention.

Convention (``pipeline.coords``): a heatmap of stride s covers the crop so that
``u = x / s`` exactly and cell j has its centre at ``u = j + 0.5``. ``encode`` and ``decode``
both use it, so a Gaussian rendered at u decodes back to u.

Targets (``encode``):
- One unnormalized Gaussian (peak 1 at the keypoint) per keypoint, evaluated at the cell
  centres: ``exp(-((j + 0.5 - u)^2 + (i + 0.5 - v)^2) / (2 sigma^2))``, rendered for all
  keypoints at once as the outer product of 1-D x and y profiles.
- Weight 1 for a labelled keypoint (v > 0, occluded v=1 included) whose centre lies in the
  crop input window ``0 <= x < W, 0 <= y < H``; weight 0 otherwise.
- Border decision: a keypoint inside the window keeps its full Gaussian, cut only by the
  grid edge (never dropped because its Gaussian touches the border). A keypoint outside
  the window gets weight 0 AND an all-zero heatmap, even where its Gaussian would reach
  in: a channel is non-zero exactly when it is supervised, so "heatmap max = 0" reliably
  flags "not in this crop".

Decoding (``decode``, TF ops on [..., h, w, K]): argmax (first maximum) plus
- ``"none"``: the argmax cell centre;
- ``"quarter"``: a quarter cell toward the higher neighbour on each axis (classic hourglass);
- ``"dark"``: DARK (distribution-aware) refinement: Gaussian-smooth the heatmap (sigma =
  the codec's sigma), take the log, and move by ``-H^-1 g`` (Taylor expansion with central
  first and second differences), at most one cell from the argmax. Within the blur radius
  of the border the raw log-heatmap is used (zero padding would bias the blur there), and
  on the outermost ring the 3x3 stencil moves one cell inward; so a Gaussian target decodes
  to its centre anywhere on the grid (tests/test_codec.py: < 0.05 cell; 1e-5 px on COCO).
``"quarter"`` refines an axis only where the argmax has both neighbours on it (not on the
outermost ring, where it keeps the cell centre).
The confidence of a joint is its heatmap maximum (0 for an empty channel, whose coordinate
is then meaningless: the top-left cell).

Flip test: our mirror is ``x -> W - x`` in crop px, i.e. ``u -> w - u`` on the heatmap, which
maps cell j onto cell w-1-j exactly. So flipping heatmaps back is a plain reverse along the
width plus the channel swap of ``flip_indices``: NO one-cell shift (that shift belongs to
the index convention u = x/s with centres at integers, where the image mirror is
x -> W-1-x). tests/test_codec.py checks this.
"""
from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

REFINE_MODES = ("none", "quarter", "dark")


class HeatmapCodec:
    """Encode keypoints into heatmaps and decode heatmaps into keypoints (crop pixels)."""

    def __init__(self, input_size: Sequence[int] = (256, 256), stride: int = 4, sigma: float = 2.0):
        in_h, in_w = int(input_size[0]), int(input_size[1])
        if stride <= 0 or in_h % stride or in_w % stride:
            raise ValueError(f"input_size {input_size} must be a multiple of stride {stride}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 heatmap pixels, got {sigma}")
        self.input_size = (in_h, in_w)
        self.stride = int(stride)
        self.sigma = float(sigma)
        self.heatmap_size = (in_h // stride, in_w // stride)

    # ------------------------------------------------------------------ encode
    def encode(self, keypoints, visibility):
        """keypoints [..., K, 2] crop px, visibility [..., K] ->
        (heatmaps float32 [..., h, w, K], weights float32 [..., K])."""
        keypoints = tf.convert_to_tensor(keypoints, tf.float32)
        visibility = tf.convert_to_tensor(visibility)
        in_h, in_w = self.input_size
        x, y = keypoints[..., 0], keypoints[..., 1]
        inside = (x >= 0.0) & (x < in_w) & (y >= 0.0) & (y < in_h)
        weights = tf.cast(inside & (visibility > 0), tf.float32)
        h, w = self.heatmap_size
        gx = self._profile(x / self.stride, w)           # [..., w, K]
        gy = self._profile(y / self.stride, h)           # [..., h, K]
        gx = gx * weights[..., tf.newaxis, :]
        heatmaps = gy[..., :, tf.newaxis, :] * gx[..., tf.newaxis, :, :]
        return heatmaps, weights

    def _profile(self, u, size: int):
        """1-D Gaussian of each keypoint at the cell centres: [..., K] -> [..., size, K]."""
        centres = tf.range(size, dtype=tf.float32) + 0.5
        d = centres[:, tf.newaxis] - u[..., tf.newaxis, :]
        return tf.exp(d * d * (-0.5 / (self.sigma * self.sigma)))

    # ------------------------------------------------------------------ decode
    def decode(self, heatmaps, refine: str = "quarter"):
        """heatmaps [..., h, w, K] -> (coords float32 [..., K, 2] crop px,
        confidence float32 [..., K] = heatmap maximum)."""
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
        heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
        h, w, k = heatmaps.shape[-3:]
        if (h, w) != self.heatmap_size:
            raise ValueError(f"heatmaps are {h}x{w}, this codec expects {self.heatmap_size}")
        lead = tf.shape(heatmaps)[:-3]
        hm = tf.reshape(heatmaps, [-1, h, w, k])
        flat = tf.reshape(tf.transpose(hm, [0, 3, 1, 2]), [-1, k, h * w])    # [B, K, h*w]
        idx = tf.argmax(flat, axis=-1, output_type=tf.int32)
        confidence = tf.reduce_max(flat, axis=-1)
        row, col = idx // w, idx % w
        cell = tf.cast(tf.stack([col, row], -1), tf.float32) + 0.5
        if refine == "quarter":
            cell += _quarter_offset(flat, idx, row, col, h, w)
        elif refine == "dark":
            if h < 3 or w < 3:
                raise ValueError("refine='dark' needs heatmaps of at least 3x3 cells")
            radius = _blur_radius(self.sigma)
            blurred = _blur(hm, self.sigma, radius)
            logs = [tf.math.log(tf.maximum(tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, k, h * w]), 1e-10))
                    for x in (blurred, hm)]
            cell = _dark_cell(logs[0], logs[1], row, col, h, w, radius)
        coords = tf.reshape(cell * float(self.stride), tf.concat([lead, [k, 2]], 0))
        confidence = tf.reshape(confidence, tf.concat([lead, [k]], 0))
        return coords, confidence

    # ------------------------------------------------------------------ flip test
    def flip_back(self, flipped_heatmaps, flip_indices: Sequence[int]):
        """Heatmaps predicted on a horizontally mirrored crop -> heatmaps of the unmirrored
        crop: reverse the width axis and swap channels by ``flip_indices`` (no shift)."""
        return flip_back(flipped_heatmaps, flip_indices)

    def merge_flip(self, heatmaps, flipped_heatmaps, flip_indices: Sequence[int]):
        """Average the heatmaps of a crop and of its mirror (flip test)."""
        return merge_flip(heatmaps, flipped_heatmaps, flip_indices)


def merge_flip(heatmaps, flipped_heatmaps, flip_indices: Sequence[int]):
    """See ``HeatmapCodec.merge_flip``."""
    return 0.5 * (tf.convert_to_tensor(heatmaps, tf.float32) + flip_back(flipped_heatmaps, flip_indices))


def flip_back(flipped_heatmaps, flip_indices: Sequence[int]):
    """See ``HeatmapCodec.flip_back``; heatmaps [..., h, w, K]."""
    hm = tf.reverse(tf.convert_to_tensor(flipped_heatmaps), axis=[-2])
    return tf.gather(hm, list(flip_indices), axis=-1)


def _gather(flat, idx):
    return tf.gather(flat, idx, batch_dims=2)


def _quarter_offset(flat, idx, row, col, h: int, w: int):
    """Quarter cell toward the higher neighbour, per axis, where both neighbours exist."""
    n = h * w

    def neighbour(delta):
        return _gather(flat, tf.clip_by_value(idx + delta, 0, n - 1))

    ok_x = (col > 0) & (col < w - 1)
    ok_y = (row > 0) & (row < h - 1)
    dx = tf.where(ok_x, tf.sign(neighbour(1) - neighbour(-1)), 0.0)
    dy = tf.where(ok_y, tf.sign(neighbour(w) - neighbour(-w)), 0.0)
    return 0.25 * tf.stack([dx, dy], -1)


def _dark_cell(log_blur, log_raw, row, col, h: int, w: int, radius: int):
    """DARK position (cells, [B, K, 2]) of each argmax (row, col).

    One Newton step ``-H^-1 g`` on the log-heatmap, with central differences on a 3x3
    stencil. The blurred log is used where the blur window lies inside the grid; nearer the
    border the raw log (zero padding would bias the blur there). On the outer ring the
    stencil moves one cell inward and the step is taken from there (exact for a Gaussian,
    whose log is quadratic). The result stays within one cell of the argmax cell centre."""
    n = h * w
    use_blur = ((col > radius) & (col < w - 1 - radius) & (row > radius) & (row < h - 1 - radius))
    crow = tf.clip_by_value(row, 1, h - 2)
    ccol = tf.clip_by_value(col, 1, w - 2)
    centre = crow * w + ccol

    def at(dy, dx):
        i = tf.clip_by_value(centre + dy * w + dx, 0, n - 1)
        return tf.where(use_blur, _gather(log_blur, i), _gather(log_raw, i))

    c = at(0, 0)
    gx = 0.5 * (at(0, 1) - at(0, -1))
    gy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2.0 * c + at(0, -1)
    dyy = at(1, 0) - 2.0 * c + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    in_x, in_y = dxx < 0.0, dyy < 0.0
    both = in_x & in_y & (det > 1e-12)
    safe_det = tf.where(both, det, 1.0)
    ox = tf.where(both, -(dyy * gx - dxy * gy) / safe_det,
                  tf.where(in_x, -gx / tf.where(in_x, dxx, -1.0), 0.0))
    oy = tf.where(both, -(dxx * gy - dxy * gx) / safe_det,
                  tf.where(in_y, -gy / tf.where(in_y, dyy, -1.0), 0.0))
    argmax_cell = tf.cast(tf.stack([col, row], -1), tf.float32) + 0.5
    stencil_cell = tf.cast(tf.stack([ccol, crow], -1), tf.float32) + 0.5
    refined = stencil_cell + tf.stack([ox, oy], -1)
    return tf.clip_by_value(refined, argmax_cell - 1.0, argmax_cell + 1.0)


def _blur_radius(sigma: float) -> int:
    return max(1, int(math.ceil(3.0 * sigma)))


def _blur(heatmaps, sigma: float, radius: int):
    """Separable Gaussian smoothing of [B, h, w, K] heatmaps (zero padding, same size)."""
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-0.5 * (t / sigma) ** 2)
    taps = taps / tf.reduce_sum(taps)
    k = heatmaps.shape[-1]
    kx = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, k, 1])
    ky = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, k, 1])
    out = tf.nn.depthwise_conv2d(heatmaps, kx, strides=[1, 1, 1, 1], padding="SAME")
    return tf.nn.depthwise_conv2d(out, ky, strides=[1, 1, 1, 1], padding="SAME")
