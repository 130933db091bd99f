"""A built-in synthetic keypoint dataset, so that the quickstart needs no download.

Each image holds one articulated figure with COCO's 17 keypoints on a cluttered background,
written as JPEGs plus COCO keypoint json files:

    out_dir/images/train/train_000001.jpg ...
    out_dir/images/val/val_000001.jpg ...
    out_dir/annotations/person_keypoints_train.json
    out_dir/annotations/person_keypoints_val.json

The figure faces the camera, so its LEFT joints lie on the image RIGHT of its body, as for a
real person facing you; left and right limbs have the same colours (a horizontal flip with a
left/right label swap is again a valid figure). Keypoints are in our continuous pixel frame
(pipeline/coords.py) and exact: every joint is quantised to OpenCV's 1/16-pixel drawing grid
and drawn there. Visibility: 2 visible, 1 under the occluder rectangle, 0 outside the image
(stored as 0, 0 as COCO does).

    python -m pipeline.synthetic --out DIR --num_train 800 --num_val 100 --seed 0

``render_clip`` renders a video clip with ground truth instead (for the tracking benchmark,
``benchmarks/video_tracking.py``): one figure of the same look walking round a larger scene,
frame after frame (``ClipConfig``); its random streams are separate from the images', so the
dataset above does not change with it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

import cv2
import numpy as np

from configs import atomic_write_bytes, atomic_write_json, builtin_spec
from pipeline.coords import from_pixel_index, to_pixel_index
from pipeline.video import VideoWriter

SHIFT = 4                 # OpenCV sub-pixel bits: coordinates are drawn on a 1/16 px grid
SUBPIXEL = 1 << SHIFT

COCO_SPEC = builtin_spec("coco")
KEYPOINT_NAMES = COCO_SPEC.names

# Colours (RGB), one per limb TYPE, shared by left and right.
TORSO = (50, 90, 210)
UPPER_ARM = (245, 140, 30)
FOREARM = (250, 215, 40)
THIGH = (40, 175, 75)
SHIN = (30, 190, 190)
SKIN = (240, 195, 160)
EYE = (25, 25, 25)
NOSE = (205, 50, 50)
EAR = (185, 115, 85)
OUTLINE = (15, 15, 15)
MARKER_COLOR = (255, 0, 255)  # debug marker; no figure part uses it


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Scene settings (image size is an argument of its own)."""

    box_fraction: tuple[float, float] = (0.4, 0.9)  # figure box side / shorter image side
    max_rotation_deg: float = 25.0                   # in-plane rotation of the whole figure
    occluder_prob: float = 0.15                      # an opaque rectangle over some joints
    cut_prob: float = 0.1                            # figure may extend past the image border
    clutter_shapes: tuple[int, int] = (2, 9)         # background shapes, [low, high)
    jpeg_quality: int = 90


@dataclasses.dataclass(frozen=True)
class SyntheticExample:
    """One rendered image and its person annotation (keypoints in our pixel frame)."""

    image: np.ndarray       # uint8 [H, W, 3] RGB
    keypoints: np.ndarray   # float64 [17, 2]; (0, 0) where visibility is 0
    visibility: np.ndarray  # int32 [17]
    bbox: tuple[float, float, float, float]  # x, y, w, h of the figure's pixels in the image
    area: float             # figure pixels not hidden by the occluder
    occluded: bool


# --------------------------------------------------------------------------- figure geometry

@dataclasses.dataclass(frozen=True)
class _Figure:
    """A pose in the figure's own frame (x to the image right, y down, height ~1)."""

    points: dict           # keypoint name or "head" / "neck" -> np.ndarray [2]
    head_radius: float
    widths: dict           # limb type -> full width


def _direction(side: float, angle_deg: float) -> np.ndarray:
    """Unit vector `angle` degrees away from straight down, towards the limb's own side."""
    a = math.radians(angle_deg)
    return np.array([side * math.sin(a), math.cos(a)])


def _sample_figure(rng: np.random.Generator) -> _Figure:
    """A random plausible pose: person's left (side +1) on the image right."""
    u = rng.uniform
    torso, neck, head_r = u(0.26, 0.32), u(0.03, 0.05), u(0.055, 0.075)
    shoulder_half, hip_half = u(0.10, 0.14), u(0.06, 0.09)
    lean = math.radians(u(-8, 8))
    up = np.array([math.sin(lean), -math.cos(lean)])
    p = {"neck": torso * up}
    p["head"] = p["neck"] + (neck + 0.9 * head_r) * up
    for name, side in (("left", 1.0), ("right", -1.0)):
        shoulder = p["neck"] + np.array([side * shoulder_half, 0.0])
        hip = np.array([side * hip_half, 0.0])
        arm = u(-25, 170)
        elbow = shoulder + u(0.15, 0.19) * _direction(side, arm)
        wrist = elbow + u(0.11, 0.17) * _direction(side, arm + u(-130, 130))
        leg = u(-12, 45) if rng.random() < 0.85 else u(45, 95)
        knee = hip + u(0.20, 0.25) * _direction(side, leg)
        ankle = knee + u(0.16, 0.24) * _direction(side, leg + u(-50, 60))
        for joint, xy in (("shoulder", shoulder), ("hip", hip), ("elbow", elbow),
                          ("wrist", wrist), ("knee", knee), ("ankle", ankle)):
            p[f"{name}_{joint}"] = xy
    _add_face(rng, p, head_r)
    k = u(0.85, 1.15)
    widths = {"upper_arm": 0.05 * k, "forearm": 0.042 * k, "thigh": 0.066 * k,
              "shin": 0.052 * k, "neck": 0.04 * k}
    return _Figure(points=p, head_radius=head_r, widths=widths)


def _add_face(rng: np.random.Generator, p: dict, r: float) -> None:
    """Eyes, nose and ears on the head circle; a small yaw and roll give it an orientation."""
    yaw, roll = rng.uniform(-0.35, 0.35), math.radians(rng.uniform(-15, 15))
    _place_face(p, r, yaw, roll)


def _place_face(p: dict, r: float, yaw: float, roll: float) -> None:
    """Eyes, nose and ears on the head circle of radius `r`, turned by `yaw` (-0.35..0.35)
    and `roll` (radians)."""
    c, s = math.cos(roll), math.sin(roll)
    rot = np.array([[c, -s], [s, c]])
    offsets = {"nose": (0.5 * yaw, 0.22)}
    for name, side in (("left", 1.0), ("right", -1.0)):
        offsets[f"{name}_eye"] = (side * 0.38 + 0.35 * yaw, -0.15)
        offsets[f"{name}_ear"] = (side * 0.95 + 0.12 * yaw, 0.02)
    for name, (dx, dy) in offsets.items():
        p[name] = p["head"] + r * (rot @ np.array([dx, dy]))


def _unit_extent(points: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    return points.min(axis=0) - margin, points.max(axis=0) + margin


# --------------------------------------------------------------------------- drawing helpers

def _sub(xy: np.ndarray) -> np.ndarray:
    """Our pixel frame -> OpenCV fixed-point pixel-index coordinates (int32, 1/16 px)."""
    return np.round(to_pixel_index(xy) * SUBPIXEL).astype(np.int32)


def _from_sub(q: np.ndarray) -> np.ndarray:
    return from_pixel_index(np.asarray(q, dtype=np.float64) / SUBPIXEL)


def _disk(canvas: np.ndarray, q: np.ndarray, radius: float, color, antialias: bool = True) -> None:
    cv2.circle(canvas, (int(q[0]), int(q[1])), max(1, int(round(radius * SUBPIXEL))), color,
               thickness=-1, lineType=cv2.LINE_AA if antialias else cv2.LINE_8, shift=SHIFT)


def _limb(canvas: np.ndarray, q0: np.ndarray, q1: np.ndarray, r0: float, r1: float, color,
          antialias: bool = True) -> None:
    """A tapered limb with round ends from q0 to q1 (fixed-point), half-widths r0, r1 in px."""
    a, b = q0.astype(np.float64), q1.astype(np.float64)
    d = b - a
    n = np.hypot(*d)
    if n > 0:
        normal = np.array([-d[1], d[0]]) / n
        poly = np.array([a + normal * r0 * SUBPIXEL, b + normal * r1 * SUBPIXEL,
                         b - normal * r1 * SUBPIXEL, a - normal * r0 * SUBPIXEL])
        cv2.fillConvexPoly(canvas, np.round(poly).astype(np.int32), color,
                           lineType=cv2.LINE_AA if antialias else cv2.LINE_8, shift=SHIFT)
    _disk(canvas, q0, r0, color, antialias)
    _disk(canvas, q1, r1, color, antialias)


def _shade(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in color)


def _lighten(color, t: float) -> tuple[int, int, int]:
    return tuple(int(round(c + (255 - c) * t)) for c in color)


def _random_color(rng: np.random.Generator, saturation: float) -> np.ndarray:
    c = rng.uniform(0, 255, size=3)
    return c.mean() + saturation * (c - c.mean())


# --------------------------------------------------------------------------- background

def _background(rng: np.random.Generator, height: int, width: int,
                clutter_shapes: tuple[int, int]) -> np.ndarray:
    """Muted gradient + smooth and fine noise + random shapes, uint8 RGB."""
    c1, c2 = _random_color(rng, rng.uniform(0.2, 0.7)), _random_color(rng, rng.uniform(0.2, 0.7))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    grid = rng.normal(0.0, rng.uniform(0, 25), size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    img += cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0.0, rng.uniform(0, 8), size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(*clutter_shapes))):
        color = tuple(float(v) for v in np.clip(_random_color(rng, rng.uniform(0.1, 0.8)), 0, 255))
        kind = rng.integers(0, 4)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.uniform(0.05, 0.4) * side)
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(rng.uniform(0.3, 1.5) * size)), color, thick)
        elif kind == 1:
            cv2.circle(img, (x, y), max(2, size // 2), color, thick, cv2.LINE_AA)
        elif kind == 2:
            x2, y2 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(img, (x, y), (x2, y2), color, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            axes = (max(2, size // 2), max(2, int(rng.uniform(0.2, 0.6) * size)))
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, color, thick, cv2.LINE_AA)
    return img


# --------------------------------------------------------------------------- one example

def _place(rng: np.random.Generator, fig: _Figure, height: int, width: int,
           config: SyntheticConfig) -> tuple[dict, float]:
    """Rotate, scale and translate the figure into the image; returns fixed-point points, px/unit."""
    names = list(fig.points)
    unit = np.stack([fig.points[n] for n in names])
    theta = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    c, s = math.cos(theta), math.sin(theta)
    rotated = unit @ np.array([[c, -s], [s, c]]).T
    margin = max(fig.head_radius, max(fig.widths.values()) / 2 + 0.01)
    lo, hi = _unit_extent(rotated, margin)
    size = hi - lo
    px_per_unit = rng.uniform(*config.box_fraction) * min(height, width) / size.max()
    box = size * px_per_unit
    slack = 0.3 * box if rng.random() < config.cut_prob else np.zeros(2)
    corner = np.array([rng.uniform(-slack[0], max(width - box[0], 0.0) + slack[0]),
                       rng.uniform(-slack[1], max(height - box[1], 0.0) + slack[1])])
    placed = (rotated - lo) * px_per_unit + corner
    return {n: _sub(xy) for n, xy in zip(names, placed)}, px_per_unit


def _draw_figure(canvas: np.ndarray, q: dict, fig: _Figure, px: float, colors: dict,
                 antialias: bool = True, silhouette=None) -> None:
    """Draw the figure (or, with `silhouette` set, its outlined shape in that one colour)."""
    outline = max(1.0, 0.012 * px)

    def paint(color):
        return silhouette if silhouette is not None else color

    def limb(a, b, kind, taper=0.85):
        r0, r1 = fig.widths[kind] * px / 2, fig.widths[kind] * px * taper / 2
        r0, r1 = max(r0, 1.0), max(r1, 1.0)
        _limb(canvas, q[a], q[b], r0 + outline, r1 + outline, paint(OUTLINE), antialias)
        _limb(canvas, q[a], q[b], r0, r1, paint(colors[kind]), antialias)

    for side in ("left", "right"):
        limb(f"{side}_hip", f"{side}_knee", "thigh")
        limb(f"{side}_knee", f"{side}_ankle", "shin")
    torso = np.stack([q["left_shoulder"], q["right_shoulder"], q["right_hip"], q["left_hip"]])
    cv2.polylines(canvas, [torso], True, paint(OUTLINE), max(1, int(round(2 * outline))),
                  cv2.LINE_AA if antialias else cv2.LINE_8, shift=SHIFT)
    cv2.fillConvexPoly(canvas, torso, paint(colors["torso"]),
                       cv2.LINE_AA if antialias else cv2.LINE_8, shift=SHIFT)
    neck_base = (q["left_shoulder"] + q["right_shoulder"]) // 2
    limb_r = fig.widths["neck"] * px / 2
    _limb(canvas, neck_base, q["head"], limb_r + outline, limb_r + outline, paint(OUTLINE), antialias)
    _limb(canvas, neck_base, q["head"], limb_r, limb_r, paint(colors["skin"]), antialias)
    head_r = fig.head_radius * px
    _disk(canvas, q["head"], head_r + outline, paint(OUTLINE), antialias)
    _disk(canvas, q["head"], head_r, paint(colors["skin"]), antialias)
    for side in ("left", "right"):
        _disk(canvas, q[f"{side}_ear"], 0.27 * head_r + outline, paint(OUTLINE), antialias)
        _disk(canvas, q[f"{side}_ear"], 0.27 * head_r, paint(EAR), antialias)
        _disk(canvas, q[f"{side}_eye"], max(1.0, 0.15 * head_r), paint(EYE), antialias)
    _disk(canvas, q["nose"], max(1.0, 0.16 * head_r), paint(NOSE), antialias)
    for side in ("left", "right"):
        limb(f"{side}_shoulder", f"{side}_elbow", "upper_arm")
        limb(f"{side}_elbow", f"{side}_wrist", "forearm")
    if silhouette is not None:
        return
    markers = (("shoulder", "upper_arm", _shade(colors["upper_arm"], 0.55)),
               ("elbow", "forearm", _shade(colors["forearm"], 0.55)),
               ("wrist", "forearm", _lighten(colors["forearm"], 0.6)),
               ("hip", "thigh", _shade(colors["thigh"], 0.55)),
               ("knee", "shin", _shade(colors["shin"], 0.55)),
               ("ankle", "shin", _lighten(colors["shin"], 0.6)))
    for side in ("left", "right"):
        for joint, kind, color in markers:
            _disk(canvas, q[f"{side}_{joint}"], max(1.2, 0.3 * fig.widths[kind] * px), color, antialias)


def _figure_colors(rng: np.random.Generator) -> dict:
    k = rng.uniform(0.8, 1.1)
    base = {"torso": TORSO, "upper_arm": UPPER_ARM, "forearm": FOREARM, "thigh": THIGH,
            "shin": SHIN, "skin": SKIN}
    return {name: _shade(color, k) for name, color in base.items()}


def _occluder(rng: np.random.Generator, image: np.ndarray, keypoints: np.ndarray,
              visibility: np.ndarray, box_side: float) -> Optional[tuple[int, int, int, int]]:
    """Paint an opaque textured rectangle over a random visible joint; returns its pixel box."""
    visible = np.flatnonzero(visibility == 2)
    if visible.size == 0:
        return None
    height, width = image.shape[:2]
    kx, ky = keypoints[int(rng.choice(visible))]
    w, h = rng.uniform(0.15, 0.35, size=2) * box_side
    x0 = max(0, int(math.floor(kx - rng.uniform(0.2, 0.8) * w)))
    y0 = max(0, int(math.floor(ky - rng.uniform(0.2, 0.8) * h)))
    x1, y1 = min(width, int(math.ceil(x0 + w))), min(height, int(math.ceil(y0 + h)))
    patch = np.empty((y1 - y0, x1 - x0, 3), np.float64)
    patch[:] = np.clip(_random_color(rng, rng.uniform(0.1, 0.9)), 0, 255)
    if rng.random() < 0.5:
        stripes = (np.arange(x1 - x0) // max(2, int(rng.integers(2, 8)))) % 2
        patch[:, stripes == 1] *= 0.6
    patch += rng.normal(0.0, 6.0, size=patch.shape)
    image[y0:y1, x0:x1] = np.clip(patch, 0, 255).astype(np.uint8)
    return x0, y0, x1, y1


def _draw_on(image: np.ndarray, q: dict, fig, px: float, colors):
    """Draw the figure on `image`; (its silhouette mask, keypoints [K, 2], visibility: 2 inside
    the image, 0 outside). Draws nothing random."""
    height, width = image.shape[:2]
    _draw_figure(image, q, fig, px, colors)
    mask = np.zeros((height, width), np.uint8)
    _draw_figure(mask, q, fig, px, colors, antialias=False, silhouette=1)
    keypoints = np.stack([_from_sub(q[name]) for name in KEYPOINT_NAMES])
    inside = ((keypoints[:, 0] >= 0) & (keypoints[:, 0] < width)
              & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < height))
    return mask, keypoints, np.where(inside, 2, 0).astype(np.int32)


def render_example(rng: np.random.Generator, image_size: tuple[int, int] = (192, 192),
                   config: SyntheticConfig = SyntheticConfig(),
                   marker_index: Optional[int] = None) -> SyntheticExample:
    """Draw one image with one figure. `marker_index` (debug/tests) paints that keypoint's
    position as a disk of MARKER_COLOR on top of everything, without changing the draws."""
    height, width = image_size
    fig = _sample_figure(rng)
    q, px = _place(rng, fig, height, width, config)
    colors = _figure_colors(rng)
    occlude = rng.random() < config.occluder_prob
    image = _background(rng, height, width, config.clutter_shapes)
    mask, keypoints, visibility = _draw_on(image, q, fig, px, colors)

    rows, cols = np.nonzero(mask)
    bbox = (float(cols.min()), float(rows.min()),
            float(cols.max() + 1 - cols.min()), float(rows.max() + 1 - rows.min()))
    rect = _occluder(rng, image, keypoints, visibility, max(bbox[2], bbox[3])) if occlude else None
    if rect is not None:
        x0, y0, x1, y1 = rect
        under = ((keypoints[:, 0] >= x0) & (keypoints[:, 0] < x1)   # the joint's pixel is painted
                 & (keypoints[:, 1] >= y0) & (keypoints[:, 1] < y1) & (visibility == 2))
        visibility[under] = 1
        mask[y0:y1, x0:x1] = 0
    keypoints[visibility == 0] = 0.0
    if marker_index is not None:
        _disk(image, q[KEYPOINT_NAMES[marker_index]], max(2.5, 0.3 * fig.widths["thigh"] * px), MARKER_COLOR)
    return SyntheticExample(image=image, keypoints=keypoints, visibility=visibility, bbox=bbox,
                            area=float(mask.sum()), occluded=rect is not None)


# --------------------------------------------------------------------------- clips

CLIP_STREAM = 2           # random streams of clips: [seed, CLIP_STREAM, ...] (images use 0, 1)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """A figure walking round a fixed scene (``render_clip``). Over one lap it walks an
    ellipse: across the frame and back, farther (smaller, higher) then nearer (larger,
    lower), turning towards where it walks (its width shrinks by the cosine of the turn),
    leaning, swinging its limbs and now and then raising its left arm. A vertical pillar
    in the scene hides what passes behind it."""

    image_size: tuple[int, int] = (480, 640)        # (H, W) of every frame
    num_frames: int = 300
    height_fraction: tuple[float, float] = (0.25, 0.45)  # standing height / frame height: far, near
    sweep: float = 0.33            # horizontal half-range of the walk / frame width (> 0.55: it
                                   # walks out of the frame and comes back)
    laps: float = 1.0              # rounds of the path over the clip
    stride_frames: float = 30.0    # frames per gait cycle
    max_turn_deg: float = 55.0     # turn (yaw) when walking across
    max_lean_deg: float = 10.0     # in-plane rotation
    pillar: bool = True
    noise: float = 3.0             # sensor noise, grey levels (std), drawn anew every frame
    clutter_shapes: tuple[int, int] = (4, 12)


def _walking_body(rng: np.random.Generator) -> dict:
    """Proportions of one figure (units of the figure frame, as ``_sample_figure``)."""
    u = rng.uniform
    k = u(0.85, 1.15)
    return {"torso": u(0.26, 0.32), "neck": u(0.03, 0.05), "head_r": u(0.055, 0.075),
            "shoulder_half": u(0.10, 0.14), "hip_half": u(0.06, 0.09),
            "upper_arm": u(0.15, 0.19), "forearm": u(0.11, 0.17), "thigh": u(0.20, 0.25),
            "shin": u(0.16, 0.24),
            "widths": {"upper_arm": 0.05 * k, "forearm": 0.042 * k, "thigh": 0.066 * k,
                       "shin": 0.052 * k, "neck": 0.04 * k}}


def _walking_pose(body: dict, phase: float, raise_deg: float, turn: float) -> _Figure:
    """The pose at gait `phase` (radians), left arm raised by `raise_deg`, turned by `turn`
    (radians): x of every point (the face's too) times cos(turn)."""
    p = {"neck": np.array([0.0, -body["torso"]])}
    p["head"] = p["neck"] + np.array([0.0, -(body["neck"] + 0.9 * body["head_r"])])
    swing = math.sin(phase)
    for name, side, sign in (("left", 1.0, 1.0), ("right", -1.0, -1.0)):
        shoulder = p["neck"] + np.array([side * body["shoulder_half"], 0.0])
        hip = np.array([side * body["hip_half"], 0.0])
        arm = 14.0 + 16.0 * sign * swing + (raise_deg if name == "left" else 0.0)
        elbow = shoulder + body["upper_arm"] * _direction(side, arm)
        wrist = elbow + body["forearm"] * _direction(side, arm + 25.0 + 20.0 * sign * swing)
        leg = 7.0 - 9.0 * sign * swing
        knee = hip + body["thigh"] * _direction(side, leg)
        ankle = knee + body["shin"] * _direction(side, leg - 6.0 + 10.0 * sign * swing)
        for joint, xy in (("shoulder", shoulder), ("hip", hip), ("elbow", elbow),
                          ("wrist", wrist), ("knee", knee), ("ankle", ankle)):
            p[f"{name}_{joint}"] = xy
    _place_face(p, body["head_r"], 0.35 * math.sin(turn), 0.0)
    squeeze = np.array([math.cos(turn), 1.0])
    return _Figure(points={n: xy * squeeze for n, xy in p.items()}, head_radius=body["head_r"],
                   widths=body["widths"])


def _pillar(rng: np.random.Generator, height: int, width: int, x_center: float) -> np.ndarray:
    """A striped vertical bar, uint8 [H, w, 3], centred on `x_center`; its columns are
    ``_pillar_columns``."""
    x0, x1 = _pillar_columns(width, x_center)
    bar = np.empty((height, x1 - x0, 3), np.float64)
    bar[:] = np.clip(_random_color(rng, rng.uniform(0.2, 0.6)), 40, 215)
    bar[:, ::6] *= 0.7
    return bar.astype(np.uint8)


def _pillar_columns(width: int, x_center: float) -> tuple[int, int]:
    half = max(2, int(round(0.025 * width)))
    x0 = int(np.clip(round(x_center) - half, 0, width - 1))
    return x0, min(width, x0 + 2 * half)


def render_clip(config: ClipConfig = ClipConfig(), seed: int = 0):
    """Yield the clip's frames in order as ``SyntheticExample`` (the figure's keypoints in
    frame pixels, visibility 2 seen, 1 behind the pillar, 0 outside the frame or frames
    without the figure, with keypoints (0, 0); bbox (0, 0, 0, 0) and area 0 when no figure
    pixel is in the frame). The same config and seed give the same frames; the noise of
    frame i comes from its own stream, the scene and the figure from the clip's."""
    height, width = (int(v) for v in config.image_size)
    if min(height, width) < 32 or config.num_frames < 1:
        raise ValueError(f"a clip needs frames of at least 32x32 and one frame, got "
                         f"{config.image_size} and {config.num_frames}")
    rng = np.random.default_rng([seed, CLIP_STREAM])
    body = _walking_body(rng)
    colors = _figure_colors(rng)
    scene = _background(rng, height, width, config.clutter_shapes)
    pillar_x = width / 2.0 + 0.5 * config.sweep * width
    pillar = _pillar(rng, height, width, pillar_x) if config.pillar else None
    raise_period = float(rng.uniform(0.35, 0.5)) * config.num_frames
    standing = body["torso"] + body["neck"] + 1.8 * body["head_r"] + body["thigh"] + body["shin"]
    far, near = config.height_fraction
    for i in range(config.num_frames):
        lap = 2.0 * math.pi * config.laps * i / config.num_frames
        depth = (1.0 - math.cos(lap)) / 2.0                        # 0 far .. 1 near
        turn = math.radians(config.max_turn_deg) * math.cos(lap)  # walking across: turned
        raise_deg = 100.0 * max(0.0, math.sin(2.0 * math.pi * i / raise_period)) ** 2
        fig = _walking_pose(body, 2.0 * math.pi * i / config.stride_frames, raise_deg, turn)
        px = (far + (near - far) * depth) * height / standing
        lean = math.radians(config.max_lean_deg) * math.sin(2.0 * lap + 0.7)
        c, s = math.cos(lean), math.sin(lean)
        feet_y = height * (0.62 + 0.28 * depth)
        hip = np.array([width / 2.0 + config.sweep * width * math.sin(lap),
                        feet_y - (body["thigh"] + body["shin"]) * px])
        names = list(fig.points)
        unit = np.stack([fig.points[n] for n in names]) @ np.array([[c, -s], [s, c]]).T
        q = {n: _sub(xy) for n, xy in zip(names, unit * px + hip)}

        image = scene.copy()
        mask, keypoints, visibility = _draw_on(image, q, fig, px, colors)
        if pillar is not None:
            x0, x1 = _pillar_columns(width, pillar_x)
            image[:, x0:x1] = pillar
            mask[:, x0:x1] = 0
            behind = (keypoints[:, 0] >= x0) & (keypoints[:, 0] < x1) & (visibility == 2)
            visibility[behind] = 1
        noise = np.random.default_rng([seed, CLIP_STREAM, i + 1]).standard_normal(
            image.shape, dtype=np.float32)
        noisy = image.astype(np.float32) + np.float32(config.noise) * noise
        rows, cols = np.nonzero(mask)
        bbox = ((float(cols.min()), float(rows.min()), float(cols.max() + 1 - cols.min()),
                 float(rows.max() + 1 - rows.min())) if rows.size else (0.0, 0.0, 0.0, 0.0))
        keypoints[visibility == 0] = 0.0
        yield SyntheticExample(image=np.clip(np.round(noisy), 0, 255).astype(np.uint8),
                               keypoints=keypoints, visibility=visibility, bbox=bbox,
                               area=float(mask.sum()), occluded=bool((visibility == 1).any()))


# --------------------------------------------------------------------------- dataset files

SPLITS = {"train": 0, "val": 1}


@dataclasses.dataclass(frozen=True)
class ClipTruth:
    """The clip's ground truth: keypoints [N, K, 2], visibility [N, K], boxes [N, 4]."""

    keypoints: np.ndarray
    visibility: np.ndarray
    boxes: np.ndarray
    image_size: tuple[int, int]


def write_clip(path: str, config: ClipConfig, seed: int = 0, fps: float = 25.0) -> ClipTruth:
    """Render the clip into a video at `path` (``pipeline.video.VideoWriter``: whole or not
    there); returns its ground truth."""
    keypoints, visibility, boxes = [], [], []
    with VideoWriter(path, fps) as writer:
        for frame in render_clip(config, seed):
            writer.write(frame.image[..., ::-1])
            keypoints.append(frame.keypoints)
            visibility.append(frame.visibility)
            boxes.append(frame.bbox)
        writer.close()
    height, width = config.image_size
    return ClipTruth(np.stack(keypoints), np.stack(visibility), np.asarray(boxes, np.float64),
                     (int(height), int(width)))


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: independent of how many images a split has."""
    return np.random.default_rng([seed, SPLITS[split], index])


def coco_categories() -> list[dict]:
    """COCO's person category: the 17 keypoint names and the 1-based skeleton."""
    return [{"supercategory": "person", "id": 1, "name": "person",
             "keypoints": list(KEYPOINT_NAMES),
             "skeleton": [[a + 1, b + 1] for a, b, _ in COCO_SPEC.skeleton]}]


def _write_jpeg(path: str, image_rgb: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the JPEG")
    atomic_write_bytes(path, data.tobytes())


def _write_split(out_dir: str, split: str, count: int, first_id: int, image_size: tuple[int, int],
                 seed: int, config: SyntheticConfig) -> dict:
    image_dir = os.path.join(out_dir, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    vis_counts = np.zeros(3, np.int64)
    occluded = 0
    for i in range(count):
        ex = render_example(example_rng(seed, split, i), image_size, config)
        image_id = first_id + i
        file_name = f"{split}_{i + 1:06d}.jpg"
        _write_jpeg(os.path.join(image_dir, file_name), ex.image, config.jpeg_quality)
        images.append({"id": image_id, "file_name": file_name,
                       "height": int(image_size[0]), "width": int(image_size[1])})
        flat = []
        for (x, y), v in zip(ex.keypoints, ex.visibility):
            flat += [float(x), float(y), int(v)]
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1,
                            "keypoints": flat, "num_keypoints": int((ex.visibility > 0).sum()),
                            "bbox": list(ex.bbox), "area": ex.area, "iscrowd": 0})
        vis_counts += np.bincount(ex.visibility, minlength=3)
        occluded += int(ex.occluded)
    json_path = os.path.join(out_dir, "annotations", f"person_keypoints_{split}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    atomic_write_json(json_path, {
        "info": {"description": "hourglass-keypoints synthetic figures", "version": "1",
                 "seed": int(seed), "image_size_hw": [int(image_size[0]), int(image_size[1])]},
        "licenses": [],
        "images": images, "annotations": annotations, "categories": coco_categories()})
    return {"json": json_path, "image_dir": image_dir, "num_images": count,
            "visibility_counts": {str(v): int(n) for v, n in enumerate(vis_counts)},
            "occluded_images": occluded}


def generate_dataset(out_dir: str, num_train: int = 800, num_val: int = 100,
                     image_size: tuple[int, int] = (192, 192), seed: int = 0,
                     config: SyntheticConfig = SyntheticConfig()) -> dict:
    """Write the train and val splits (images first, then each split's json, atomically).

    Same arguments give the same bytes. Returns per-split paths and counts plus `seconds`.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    height, width = (int(v) for v in image_size)
    if min(height, width) < 32:
        raise ValueError(f"image_size {image_size} is too small; use at least 32x32")
    start = time.perf_counter()
    summary = {"out_dir": out_dir, "image_size_hw": [height, width], "seed": int(seed)}
    summary["train"] = _write_split(out_dir, "train", num_train, 1, (height, width), seed, config)
    summary["val"] = _write_split(out_dir, "val", num_val, num_train + 1, (height, width), seed, config)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic COCO-format keypoint dataset.")
    parser.add_argument("--out", required=True, help="output folder (images/, annotations/)")
    parser.add_argument("--num_train", type=int, default=800)
    parser.add_argument("--num_val", type=int, default=100)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = generate_dataset(args.out, args.num_train, args.num_val, (args.height, args.width), args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
