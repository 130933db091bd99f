"""Drawing skeletons and heatmaps on RGB images (host side: TensorBoard, demo, eval)."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from configs.keypoints import COLOR_RGB, KeypointSpec
from pipeline.coords import to_pixel_index

_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px


def _fixed(xy) -> tuple[int, int]:
    x, y = to_pixel_index(xy)
    return int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT)))


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, valid: Sequence[bool],
                  spec: KeypointSpec, color: Optional[tuple[int, int, int]] = None,
                  thickness: Optional[int] = None) -> np.ndarray:
    """A copy of an RGB uint8 image with limbs (skeleton colours, or `color`) and joints.

    keypoints: [K, 2] in the project convention (pixel centres at +0.5)."""
    out = np.ascontiguousarray(np.array(image, dtype=np.uint8, copy=True))
    h, w = out.shape[:2]
    t = thickness or max(1, int(round(min(h, w) / 160)))
    valid = np.asarray(valid, bool)
    for a, b, c in spec.skeleton:
        if valid[a] and valid[b]:
            cv2.line(out, _fixed(keypoints[a]), _fixed(keypoints[b]), color or COLOR_RGB[c], t,
                     cv2.LINE_AA, _SHIFT)
    for k in range(len(keypoints)):
        if valid[k]:
            cv2.circle(out, _fixed(keypoints[k]), (t + 1) << _SHIFT, color or (255, 255, 0), -1,
                       cv2.LINE_AA, _SHIFT)
    return out


def heatmap_overlay(image: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """The per-pixel maximum over keypoint heatmaps, coloured, blended over the image."""
    h, w = image.shape[:2]
    peak = np.clip(np.max(np.asarray(heatmaps, np.float32), axis=-1), 0.0, 1.0)
    peak = cv2.resize(peak, (w, h), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap((peak * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.5 * np.asarray(image, np.float32) + 0.5 * coloured).astype(np.uint8)


TRACKED_RGB = (0, 220, 0)      # a box read from the previous frame's keypoints (or --bbox)
SEARCH_RGB = (255, 170, 0)     # the initial / fallback box of a search


def draw_box(image: np.ndarray, box, tracked: bool = True,
             thickness: Optional[int] = None) -> np.ndarray:
    """A copy of an RGB uint8 image with the box (x, y, w, h in the project's pixel
    convention, ``pipeline.coords``) outlined: green when `tracked`, orange for a search."""
    out = np.ascontiguousarray(np.array(image, dtype=np.uint8, copy=True))
    h, w = out.shape[:2]
    t = thickness or max(1, int(round(min(h, w) / 240)))
    x, y, bw, bh = (float(v) for v in box)
    cv2.rectangle(out, _fixed((x, y)), _fixed((x + bw, y + bh)),
                  TRACKED_RGB if tracked else SEARCH_RGB, t, cv2.LINE_AA, _SHIFT)
    return out
