"""One predictor for eval, predict and verify: runner -> decode -> inverse crop affine.

``Predictor(runner, card)`` takes its codec (input size, stride, sigma) and crop (mode,
padding) from the model card. Heatmap models are decoded by the codec (``refine``: the
card's unless given; the flip test averages the mirrored input's heatmaps); models exported
with their decoder give crop-pixel keypoints themselves (the flip test averages the mirrored
input's keypoints, mirrored back and swapped by the flip pairs). ``to_image`` maps crop
pixels back to the original image through the inverse of each crop's affine.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from model.card import ModelCard
from model.runner import Runner


class Predictor:
    def __init__(self, runner: Runner, card: ModelCard, refine: Optional[str] = None,
                 flip_test: bool = False):
        self.runner, self.card, self.flip_test = runner, card, flip_test
        self.refine = runner.card.decoder if (runner.decodes and runner.card is not None
                                              and runner.card.decoder) else (refine or card.refine)
        self.codec = None if runner.decodes else card.codec()
        self.input_size = tuple(card.input_size)

    @property
    def spec(self):
        return self.card.keypoints

    def heatmaps(self, crops: np.ndarray) -> np.ndarray:
        """Last-stack heatmaps of uint8 crops; with the flip test, merged with the mirror's."""
        from pipeline.codec import merge_flip
        heatmaps = self.runner(crops)
        if self.flip_test:
            flipped = self.runner(np.ascontiguousarray(crops[:, :, ::-1]))
            heatmaps = np.asarray(merge_flip(heatmaps, flipped, self.spec.flip_indices))
        return heatmaps

    def crop_keypoints(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints [B, K, 2] float64 crop px, confidence [B, K]) of uint8 crops [B, H, W, 3]."""
        crops = np.asarray(crops, np.uint8)
        if not self.runner.decodes:
            coords, conf = self.codec.decode(self.heatmaps(crops), refine=self.refine)
            return np.asarray(coords, np.float64), np.asarray(conf, np.float64)
        coords, conf = (np.asarray(v, np.float64) for v in self.runner.keypoints(crops))
        if self.flip_test:
            mirrored, mconf = (np.asarray(v, np.float64) for v in
                               self.runner.keypoints(np.ascontiguousarray(crops[:, :, ::-1])))
            order = list(self.spec.flip_indices)
            mirrored = mirrored[:, order]
            mirrored[..., 0] = self.input_size[1] - mirrored[..., 0]   # x -> W - x
            coords, conf = (coords + mirrored) / 2.0, (conf + mconf[:, order]) / 2.0
        return coords, conf

    @staticmethod
    def to_image(coords: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        """Crop-pixel keypoints [B, K, 2] -> original-image pixels, per crop matrix [B, 3, 3]."""
        from pipeline.affine import to_original_np
        return to_original_np(matrices, coords)

    def crop_matrix(self, image_shape, bbox=None) -> np.ndarray:
        """The crop affine of one image: the box (x, y, w, h) padded as in training, else the
        whole frame letterboxed (the card's padding for a model trained on frames, else none)."""
        from pipeline.affine import crop_matrix
        from pipeline.coords import box_to_center_scale
        if bbox is not None:
            center, scale = box_to_center_scale(*bbox)
            matrix = crop_matrix(center, scale, self.card.padding, self.input_size)
        else:
            padding = self.card.padding if self.card.crop_mode == "frame" else 1.0
            matrix = crop_matrix(None, None, padding, self.input_size, crop_mode="frame",
                                 image_size=tuple(image_shape[:2]))
        return np.asarray(matrix, np.float64)

    def predict_image(self, image_rgb: np.ndarray, bbox=None) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints [K, 2] in original-image pixels and confidences [K] for one RGB image."""
        from pipeline.affine import warp_image
        matrix = self.crop_matrix(image_rgb.shape, bbox)
        crop = np.asarray(warp_image(np.asarray(image_rgb, np.uint8), matrix.astype(np.float32),
                                     self.input_size))   # uint8 in, rounded uint8 out
        coords, conf = self.crop_keypoints(crop[None])
        return self.to_image(coords, matrix[None])[0], conf[0]
