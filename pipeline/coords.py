"""The one coordinate convention of this project, written once.

Every keypoint, box and centre in this code base is in **continuous pixel coordinates,
0-based, with pixel centres at +0.5**: the image's top-left corner is (0, 0), the centre of
pixel (row r, column c) is (x, y) = (c + 0.5, r + 0.5), and a W×H image spans [0, W]×[0, H].

- COCO json keypoints and boxes already use this frame (a box [x, y, w, h] starts at the
  corner); they are stored unchanged.
- MPII / the original project's custom json use MATLAB 1-based pixel indices: x_ours = x - 0.5.
- DeepLabCut labels are 0-based pixel indices (pixel centres at integers): x_ours = x + 0.5.
- A heatmap of stride s covers the input crop the same way: heatmap cell j spans input
  [j·s, (j+1)·s) and its centre is (j + 0.5)·s, so u_heatmap = x_input / s exactly.

Person boxes are stored as a centre and a *scale*: the side of the person's square box is
``PIXELS_PER_SCALE * scale`` pixels (MPII's convention, person height ≈ 200·scale).
The parser multiplies that side by its crop padding (1.25 by default) and widens one side
to the model's aspect ratio.
"""
from __future__ import annotations

import numpy as np

PIXELS_PER_SCALE = 200.0


def from_one_based(xy):
    """MATLAB 1-based pixel indices (MPII, original custom json) -> ours."""
    return np.asarray(xy, dtype=np.float64) - 0.5


def from_pixel_index(xy):
    """0-based pixel indices with centres at integers (DeepLabCut, OpenCV drawing) -> ours."""
    return np.asarray(xy, dtype=np.float64) + 0.5


def to_pixel_index(xy):
    return np.asarray(xy, dtype=np.float64) - 0.5


def box_to_center_scale(x: float, y: float, w: float, h: float) -> tuple[tuple[float, float], float]:
    """A box [x, y, w, h] (corner + size) -> centre and the scale of its enclosing square."""
    center = (x + w / 2.0, y + h / 2.0)
    return center, max(w, h) / PIXELS_PER_SCALE


def crop_size(scale: float, padding: float, aspect_wh: float) -> tuple[float, float]:
    """Crop window (width, height) in pixels: the padded square, widened to aspect W/H."""
    side = PIXELS_PER_SCALE * scale * padding
    if aspect_wh >= 1.0:
        return side * aspect_wh, side
    return side, side / aspect_wh
