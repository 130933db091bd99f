"""Decoded record -> (model input, targets), in train or eval mode.

``Parser(config, spec)`` exposes ``parse_train(decoded, seed)`` and ``parse_eval(decoded)``;
the input reader picks one when the pipeline is built, and hands it one person at a time
(``pipeline.decoder.decode_persons``: pixels left encoded, the crop decodes only the window it
reads). Both parse functions also take persons decoded whole (``pipeline.decoder.decode``),
and both return ``(image, labels)``:

- image: uint8 [H, W, 3] RGB 0-255 (rounded and clipped after warp / jitter; the model
  normalizes).
- labels: ``heatmaps`` float32 [H/s, W/s, K], ``weights`` float32 [K], ``keypoints``
  float32 [K, 2] crop px (0 where unlabelled), ``visibility`` int32 [K] (channel order of
  the output, i.e. swapped after a flip). Eval adds ``matrix`` float32 [3, 3] (original px ->
  crop px), ``source_id``, ``annotation_id``, ``center`` and ``scale`` (those the crop used:
  the frame's in crop_mode "frame"), ``bbox``, ``area``, ``head_size``, ``orig_keypoints``
  [K, 2] and ``image_size`` int32 [2] (h, w).

Training draws every random value from ``seed`` (int64 [2]) with stateless ops, once per
example; one matrix (``pipeline.affine.crop_matrix``) moves both the image (one warp) and the
keypoints (exactly, in float). Horizontal flips swap channels by ``spec.flip_indices``;
vertical flips happen only when the spec has vertical pairs. Everything is TF graph ops.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from configs.keypoints import KeypointSpec
from pipeline import affine, decoder
from pipeline.codec import HeatmapCodec

# Luma weights (ITU-R BT.601) used for the saturation jitter's grey image.
_GREY = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class ParserConfig:
    """Crop, target and augmentation settings. Probabilities in [0, 1]; ``rotation_deg`` is
    the largest |angle|; ``translate_frac`` the largest shift as a fraction of the input size;
    ``color_jitter`` the largest relative change of per-channel gain, contrast and
    saturation; ``vertical_flip_prob`` applies only to specs with vertical flip pairs;
    ``rotated_sampler`` warps rotated crops with XLA-compiled gathers ("xla", ~2x faster on
    CPU) or ImageProjectiveTransformV3 ("projective"); both give the same pixels to float
    rounding (``pipeline.affine.crop_window``)."""

    input_size: tuple[int, int] = (256, 256)
    stride: int = 4
    sigma: float = 2.0
    padding: float = 1.25
    crop_mode: str = "box"
    rotation_deg: float = 30.0
    rotation_prob: float = 0.6
    scale_range: tuple[float, float] = (0.75, 1.25)
    flip_prob: float = 0.5
    vertical_flip_prob: float = 0.5
    translate_frac: float = 0.05
    color_jitter: float = 0.2
    rotated_sampler: str = "xla"

    def __post_init__(self):
        if self.rotated_sampler not in affine.ROTATED_SAMPLERS:
            raise ValueError(f"ParserConfig.rotated_sampler must be one of {affine.ROTATED_SAMPLERS}, "
                             f"got {self.rotated_sampler!r}")
        if self.crop_mode not in affine.CROP_MODES:
            raise ValueError(f"ParserConfig.crop_mode must be one of {affine.CROP_MODES}, "
                             f"got {self.crop_mode!r}")
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ValueError(f"ParserConfig.input_size must be (H, W) > 0, got {self.input_size}")
        for name in ("rotation_prob", "flip_prob", "vertical_flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ParserConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.scale_range
        if not 0.0 < lo <= hi:
            raise ValueError(f"ParserConfig.scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if self.padding <= 0:
            raise ValueError(f"ParserConfig.padding must be > 0, got {self.padding}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"ParserConfig.color_jitter must be in [0, 1), got {self.color_jitter}")
        if self.rotation_deg < 0 or self.translate_frac < 0:
            raise ValueError("ParserConfig.rotation_deg and translate_frac must be >= 0")


class Parser:
    """Builds model inputs and targets for one keypoint spec (see module docstring)."""

    def __init__(self, config: ParserConfig, spec: KeypointSpec):
        self.config = config
        self.spec = spec
        self.num_keypoints = spec.num_keypoints
        self.codec = HeatmapCodec(config.input_size, config.stride, config.sigma)

    def parse_train(self, decoded: dict, seed):
        """Augmented crop and targets; every random draw comes from ``seed`` (int64 [2])."""
        cfg = self.config
        keypoints, visibility = self._checked_keypoints(decoded)
        aug = draw_augmentation(seed, cfg, self.spec.has_vertical_pairs)
        center, scale = crop_center_scale(decoded, cfg)
        matrix = affine.crop_matrix(
            center, scale * aug["scale_factor"], cfg.padding, cfg.input_size,
            rotation_deg=aug["rotation_deg"], flip=aug["flip"], shift=aug["shift"],
            vertical_flip=aug["vertical_flip"])
        image = self._crop(decoded, matrix, exact=False)
        if cfg.color_jitter > 0:
            image = color_jitter(image, aug["color"])
        image = affine.to_uint8(image)
        crop_kp = affine.transform_points(matrix, keypoints)
        crop_kp, visibility = flip_keypoints(crop_kp, visibility, aug["flip"], self.spec.flip_indices)
        if self.spec.has_vertical_pairs:
            crop_kp, visibility = flip_keypoints(crop_kp, visibility, aug["vertical_flip"],
                                                 self.spec.vertical_flip_indices)
        return self._finish(image, crop_kp, visibility)

    def parse_eval(self, decoded: dict):
        """Un-augmented crop, targets and what is needed to map predictions back."""
        cfg = self.config
        keypoints, visibility = self._checked_keypoints(decoded)
        center, scale = crop_center_scale(decoded, cfg)
        matrix = affine.crop_matrix(center, scale, cfg.padding, cfg.input_size)
        image = affine.to_uint8(self._crop(decoded, matrix))
        crop_kp = affine.transform_points(matrix, keypoints)
        image, labels = self._finish(image, crop_kp, visibility)
        labels.update({
            "matrix": tf.ensure_shape(matrix, [3, 3]),
            "source_id": decoded["source_id"],
            "annotation_id": decoded["annotation_id"],
            "center": tf.ensure_shape(tf.cast(center, tf.float32), [2]),
            "scale": tf.ensure_shape(tf.cast(scale, tf.float32), []),
            "bbox": decoded["bbox"],
            "area": decoded["area"],
            "head_size": decoded["head_size"],
            "orig_keypoints": keypoints,
            "image_size": tf.stack([decoded["height"], decoded["width"]]),
        })
        return image, labels

    def decode(self, serialized) -> dict:
        """A record of one person (``pipeline.decoder.decode``) leaving the pixels encoded: the
        crop decodes only the window it reads (``decoder.read_window``)."""
        return decoder.decode(serialized, image=False)

    def _crop(self, decoded: dict, matrix, exact: bool = True):
        """Float crop of ``decoded`` (pixels decoded or not) for ``matrix``. ``exact``: sampled
        as if the image went on past its bottom/right (``affine.crop_window``'s
        ``unbounded_end``: the crop the one-file TFLite pipeline repeats bit for bit); training
        crops skip that (about 5-10% faster, the same pixels to float rounding)."""
        return affine.crop_window(lambda window: decoder.read_window(decoded, window),
                                  decoder.image_size(decoded), matrix, self.config.input_size,
                                  rotated=self.config.rotated_sampler, unbounded_end=exact)

    def _checked_keypoints(self, decoded: dict):
        k = self.num_keypoints
        count = tf.shape(decoded["keypoints"])[0]
        check = decoder.check(
            tf.equal(count, k),
            f"record keypoint count differs from the keypoint spec ({k}); convert the records "
            "with the same classes file as training uses",
            ["file:", decoded["filename"], "annotation_id:", decoded["annotation_id"],
             "keypoints in record:", count])
        with tf.control_dependencies([check]):
            keypoints = tf.ensure_shape(tf.identity(decoded["keypoints"]), [k, 2])
        visibility = tf.ensure_shape(tf.cast(decoded["visibility"], tf.int32), [k])
        return keypoints, visibility

    def _finish(self, image, crop_kp, visibility):
        h, w = self.config.input_size
        crop_kp = tf.where((visibility > 0)[:, tf.newaxis], crop_kp, 0.0)
        heatmaps, weights = self.codec.encode(crop_kp, visibility)
        labels = {
            "heatmaps": heatmaps,
            "weights": weights,
            "keypoints": crop_kp,
            "visibility": visibility,
        }
        return tf.ensure_shape(image, [h, w, 3]), labels


def crop_center_scale(decoded: dict, config: ParserConfig):
    """Centre and scale of the crop: the record's in "box" mode, the letterboxed whole image
    in "frame" mode."""
    if config.crop_mode == "frame":
        size = tf.stack([decoded["height"], decoded["width"]])
        return affine.frame_center_scale(size, config.padding, config.input_size)
    return decoded["center"], decoded["scale"]


def draw_augmentation(seed, config: ParserConfig, vertical_allowed: bool) -> dict:
    """All random values of one example from ``seed`` (int [2]) with one stateless draw:
    scale_factor [], rotation_deg [], flip bool [], vertical_flip bool [], shift [2] (crop
    px), color [5] (3 channel gains, contrast, saturation)."""
    u = tf.random.stateless_uniform([12], tf.cast(seed, tf.int64))
    lo, hi = config.scale_range
    t, j, r = config.translate_frac, config.color_jitter, config.rotation_deg
    in_w, in_h = float(config.input_size[1]), float(config.input_size[0])
    vflip_prob = config.vertical_flip_prob if vertical_allowed else 0.0
    # One affine map of the uniforms: u[0] scale, u[2] angle, u[5:7] shift, u[7:12] colour;
    # u[1], u[3], u[4] are compared with the probabilities.
    low = tf.constant([lo, 0.0, -r, 0.0, 0.0, -t * in_w, -t * in_h] + [1.0 - j] * 5, tf.float32)
    span = tf.constant([hi - lo, 0.0, 2.0 * r, 0.0, 0.0, 2.0 * t * in_w, 2.0 * t * in_h]
                       + [2.0 * j] * 5, tf.float32)
    v = low + span * u
    happens = u[1:5] < tf.constant([config.rotation_prob, 0.0, config.flip_prob, vflip_prob])
    return {
        "scale_factor": v[0],
        "rotation_deg": tf.where(happens[0], v[2], 0.0),
        "flip": happens[2],
        "vertical_flip": happens[3],
        "shift": v[5:7],
        "color": v[7:12],
    }


def color_jitter(image, factors):
    """float image [H, W, 3] 0-255, factors [5] = (gain r, g, b, contrast c, saturation s):
    per-channel gain, then contrast about the mean luma m of the gained crop, then
    saturation about each pixel's luma (BT.601). All three are linear, so they run as one
    3x3 colour matrix plus an offset: ``out = c·P·G·p + (1 - c)·m`` with G = diag(gains),
    P = s·I + (1 - s)·1·lumaᵀ. m is measured on every 8th pixel of every 8th row.
    Returns float, unclipped."""
    gains, contrast, saturation = factors[:3], factors[3], factors[4]
    luma = tf.constant(_GREY, tf.float32)
    mean = tf.reduce_sum(luma * gains * tf.reduce_mean(image[::8, ::8], axis=[0, 1]))
    grey = tf.constant([_GREY] * 3, tf.float32)                       # 1·lumaᵀ
    colour = contrast * (saturation * tf.eye(3) + (1.0 - saturation) * grey) * gains
    offset = tf.fill([3], (1.0 - contrast) * mean)
    flat = tf.reshape(image, [-1, 3])
    out = tf.nn.bias_add(tf.linalg.matmul(flat, colour, transpose_b=True), offset)  # one fused op on CPU
    return tf.reshape(out, tf.shape(image))


def flip_keypoints(keypoints, visibility, flip, flip_indices):
    """Where ``flip`` is true, give channel i the keypoint of channel flip_indices[i] (the
    coordinates are already mirrored by the matrix); otherwise unchanged."""
    idx = tf.constant(list(flip_indices), tf.int32)
    keypoints = tf.where(flip, tf.gather(keypoints, idx), keypoints)
    visibility = tf.where(flip, tf.gather(visibility, idx), visibility)
    return keypoints, visibility
