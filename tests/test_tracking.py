"""Video tracking and smoothing (model/tracking.py, run.py predict --track --smooth --csv).

The tracker's logic is tested against a geometric stand-in for a model (it sees the subject
only when its read window frames it at a usable scale); then the session's quickstart model
(tests/trained_model.py) follows a figure of ``pipeline.synthetic.render_clip`` that walks
out of the frame and back, and run.py writes a tracked video and its CSV from a TFLite export.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.tracking import (
    BOX_MARGIN,
    BOX_POINT_SHARE,
    OneEuroFilter,
    OneEuroSettings,
    Tracker,
    TrackStep,
    keypoint_box,
    min_points,
    search_tiles,
    smooth_step,
    widened,
)
from tests.test_run import _main as _run

finite = dict(allow_nan=False, allow_infinity=False)


# ------------------------------------------------------------------ One-Euro filter
@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.tuples(st.floats(-1e4, 1e4, **finite), st.floats(-1e4, 1e4, **finite)),
                       min_size=1, max_size=17),
       steps=st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=30),
       conf=st.floats(0.1, 1.0), min_cutoff=st.floats(1e-3, 100.0), beta=st.floats(0.0, 100.0))
def test_constant_signal_comes_out_exactly(points, steps, conf, min_cutoff, beta):
    """Whatever the settings and (increasing) times, a still keypoint is never moved."""
    x = np.asarray(points, np.float64)
    f = OneEuroFilter(OneEuroSettings(min_cutoff, beta), conf_threshold=0.1)
    t = 0.0
    for dt in [0.0] + steps:
        t += dt
        assert np.array_equal(f(t, x, np.full(len(x), conf)), x)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.05, 20.0), offset=st.tuples(st.floats(-500, 500), st.floats(-500, 500)),
       seed=st.integers(0, 2 ** 16), beta=st.floats(0.0, 20.0))
def test_filter_is_the_same_for_a_small_and_a_large_subject(scale, offset, seed, beta):
    """Speeds are in subject sizes per second: the filtered track of a subject scaled by s
    and moved by c is s x the filtered track + c (one setting suits every size)."""
    rng = np.random.default_rng(seed)
    track = np.cumsum(rng.normal(0, 3, size=(25, 5, 2)), axis=0) + rng.uniform(0, 100, size=(1, 5, 2))
    conf = rng.uniform(0.0, 1.0, size=(25, 5))
    a, b = (OneEuroFilter(OneEuroSettings(1.0, beta), 0.3) for _ in range(2))
    for i in range(len(track)):
        out_a = a(i / 25, track[i], conf[i])
        out_b = b(i / 25, scale * track[i] + np.asarray(offset), conf[i])
        np.testing.assert_allclose(out_b, scale * out_a + np.asarray(offset), rtol=1e-9, atol=1e-6)


def test_a_low_confidence_point_does_not_drag_the_filtered_one():
    """Point 1 jumps with confidence under the threshold: it stays exactly where it was while
    point 0 moves on (point 2, still, is carried a little by the centre of the two: less than
    a quarter of point 0's step); confident again, it goes towards its new position."""
    f = OneEuroFilter(OneEuroSettings(1.0, 1.0), conf_threshold=0.3)
    still = np.array([[10.0, 10.0], [50.0, 50.0], [30.0, 80.0]])
    f(0.0, still, np.ones(3))
    moved = still + [[5.0, 0.0], [400.0, -300.0], [0.0, 0.0]]
    out = f(0.04, moved, np.array([0.9, 0.05, 0.9]))
    assert np.array_equal(out[1], still[1])
    assert np.linalg.norm(out[2] - still[2]) < 0.25 * 5.0
    assert 10.0 < out[0, 0] < 15.0
    back = f(0.08, moved, np.array([0.9, 0.9, 0.9]))
    step = np.abs(back[1] - still[1])
    assert np.all(step > 0) and np.all(step <= np.abs(moved[1] - still[1]))


def _figure(k=17, seed=0):
    return np.random.default_rng(seed).uniform(0, 100, size=(k, 2))


def _one_euro_per_point(track: np.ndarray, size: float, s: OneEuroSettings, fps: float = 25.0):
    """The plain One-Euro filter (Casiez et al.), each point on its own, speeds in sizes/s:
    what the filter does without its centre."""
    def alpha(cutoff):
        return 1.0 / (1.0 + fps / (2.0 * np.pi * cutoff))

    out, dx = [track[0]], np.zeros_like(track[0])
    for x in track[1:]:
        dx = dx + alpha(1.0) * ((x - out[-1]) * fps - dx)
        cutoff = s.min_cutoff + s.beta * np.linalg.norm(dx, axis=-1, keepdims=True) / size
        out.append(out[-1] + alpha(cutoff) * (x - out[-1]))
    return np.stack(out)


def _jitter(track):
    """Mean length of the second difference of each point's track [T, K, 2] (px)."""
    return np.linalg.norm(track[2:] - 2 * track[1:-1] + track[:-2], axis=-1).mean()


def test_a_walking_subject_lags_less_and_a_still_one_is_as_steady():
    """A rigid 17-point figure crossing the frame at 3 px a frame (25 fps) trails, once
    settled, by under half what each point filtered on its own trails; held still with
    noise, it keeps under a third of the noise's jitter and at most 1.3x the per-point
    filter's."""
    figure, settings = _figure(), OneEuroSettings()
    size = float((figure.max(0) - figure.min(0)).max())
    walk = figure + 3.0 * np.arange(60)[:, None, None] * [1.0, 0.0]
    f = OneEuroFilter(settings)
    together = np.stack([f(i / 25, walk[i], np.ones(17)) for i in range(60)])
    alone = _one_euro_per_point(walk, size, settings)
    lag_together = np.abs(together - walk)[30:, :, 0].mean()
    lag_alone = np.abs(alone - walk)[30:, :, 0].mean()
    assert lag_together < lag_alone / 2, (lag_together, lag_alone)

    noisy = figure + np.random.default_rng(1).normal(0, 2.0, size=(100, 17, 2))
    f = OneEuroFilter(settings)
    together = np.stack([f(i / 25, noisy[i], np.ones(17)) for i in range(100)])
    alone = _one_euro_per_point(noisy, size, settings)
    assert _jitter(together) < min(1.3 * _jitter(alone), _jitter(noisy) / 3), \
        (_jitter(together), _jitter(alone), _jitter(noisy))


def test_a_point_leaving_and_coming_back_moves_no_other():
    """The centre is taken afresh when the confident set changes, so a still figure stays
    exactly still while one of its points goes under the threshold (wherever its guess
    goes) and comes back, even somewhere else (an arm that moved while hidden)."""
    figure = _figure()
    f = OneEuroFilter()
    conf = np.ones(17)
    for i in range(5):
        assert np.array_equal(f(i / 25, figure, conf), figure)
    conf[4] = 0.0
    out = f(5 / 25, figure + np.where(np.arange(17) == 4, 50.0, 0.0)[:, None], conf)
    assert np.array_equal(out, figure)
    conf[4] = 1.0
    assert np.array_equal(f(6 / 25, figure, conf), figure)
    moved = figure.copy()
    moved[7] += [40.0, -30.0]
    conf[7] = 0.0
    f(7 / 25, figure, conf)
    conf[7] = 1.0
    for i in (8, 9):
        out = f(i / 25, moved, conf)
        others = np.arange(17) != 7
        assert np.array_equal(out[others], figure[others])
        assert 0 < np.linalg.norm(out[7] - figure[7]) <= 50.0


def test_smoothing_takes_out_noise_and_follows_motion():
    """A point moving at constant speed v with 3 px of noise: the filtered track jitters at
    most half as much, and lags by no more than an exponential filter at the lowest cutoff
    would (v / (2 pi min_cutoff)), give or take the noise."""
    rng = np.random.default_rng(0)
    t = np.arange(100) / 25.0
    truth = np.stack([100 + 40 * t, 200 - 20 * t], -1)[:, None, :]
    noisy = truth + rng.normal(0, 3, size=truth.shape)
    f = OneEuroFilter(OneEuroSettings(1.0, 4.0), 0.1)
    # a 2-point subject so it has a size: a second, still point 100 px away
    anchor = np.array([[0.0, 0.0]])
    out = np.stack([f(ti, np.concatenate([x, anchor]), np.ones(2))[:1] for ti, x in zip(t, noisy)])
    assert _jitter(out) < 0.5 * _jitter(noisy)
    lag = np.linalg.norm(out - truth, axis=-1)[50:].mean()
    assert lag < np.hypot(40.0, 20.0) / (2 * np.pi * 1.0) + 1.0, lag


def test_times_must_increase_and_settings_are_checked():
    f = OneEuroFilter()
    f(1.0, np.zeros((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="must increase"):
        f(1.0, np.ones((2, 2)), np.ones(2))
    for bad in ({"min_cutoff": 0.0}, {"min_cutoff": float("nan")}, {"beta": -1.0}):
        with pytest.raises(ValueError):
            OneEuroSettings(**bad)


# ------------------------------------------------------------------ boxes and tiles
@settings(max_examples=60, deadline=None)
@given(pts=st.lists(st.tuples(st.floats(-1000, 1000), st.floats(-1000, 1000)), min_size=4, max_size=17),
       data=st.data())
def test_keypoint_box_holds_the_confident_points_with_its_margin(pts, data):
    pts = np.asarray(pts)
    conf = np.asarray(data.draw(st.lists(st.floats(0, 1), min_size=len(pts), max_size=len(pts))))
    box = keypoint_box(pts, conf, 0.5)
    ok = conf >= 0.5
    side = float(np.ptp(pts[ok], axis=0).max()) if ok.sum() else 0.0
    if ok.sum() < min_points(len(pts)) or side == 0.0:
        assert box is None
        return
    x, y, w, h = box
    inner = pts[ok]
    m = BOX_MARGIN * side
    assert np.allclose([x, y], inner.min(0) - m) and np.allclose([x + w, y + h], inner.max(0) + m)
    assert max(w, h) == pytest.approx(side * (1 + 2 * BOX_MARGIN))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(32, 2000), w=st.integers(32, 2000))
def test_search_tiles_cover_the_frame(h, w):
    """Squares of half the shorter side, inside the frame, every point of it in some tile
    away from that tile's border by a quarter side or the frame's edge."""
    tiles = np.asarray(search_tiles((h, w, 3)))
    side = min(h, w) / 2.0
    assert np.allclose(tiles[:, 2:], side)
    assert (tiles[:, :2] >= 0).all()
    assert (tiles[:, 0] + side <= w + 1e-9).all() and (tiles[:, 1] + side <= h + 1e-9).all()
    grid = np.stack(np.meshgrid(np.linspace(0, w, 23), np.linspace(0, h, 19)), -1).reshape(-1, 2)
    for p in grid:
        lo, hi = tiles[:, :2], tiles[:, :2] + side
        margin = np.minimum(np.minimum(p - lo, hi - p), side / 4)
        near_edge = np.minimum(p, [w, h] - p) < side / 4
        inside = ((p >= lo) & (p <= hi) & ((margin >= side / 4 - 1e-9) | near_edge)).all(1)
        assert inside.any(), (p, h, w)


# ------------------------------------------------------------------ tracker logic
class _Scene:
    """A subject of K points (`size` px) at `centers[i]` in frame i of a W x H frame; a read
    sees it (exact points, confidence 0.9) when the read window (the box padded by 1.25 as
    a square, or the whole frame) holds it and it fills at least 30% of the window; else it
    gets points spread over the window with confidence 0.2."""

    K = 8

    def __init__(self, centers, size=100.0, frame=(480, 640)):
        self.centers, self.size, self.frame, self.calls = centers, size, frame, []
        ang = np.linspace(0, 2 * np.pi, self.K, endpoint=False)
        self.shape = 0.5 * size * np.stack([np.cos(ang), np.sin(ang)], -1)

    def truth(self, i):
        return self.centers[i] + self.shape

    def predict(self, frame, box):
        i = int(frame[0, 0, 0])
        self.calls.append((i, box))
        h, w = self.frame
        if box is None:
            lo, side = np.array([0.0, 0.0]), float(max(h, w))
            hi = np.array([w, h], float)
        else:
            side = 1.25 * max(box[2], box[3])
            c = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
            lo, hi = c - side / 2, c + side / 2
        pts = self.truth(i)
        if (pts >= lo).all() and (pts <= hi).all() and self.size >= 0.3 * side and (pts >= 0).all() \
                and (pts <= [w, h]).all():
            return pts, np.full(self.K, 0.9)
        spread = lo + (hi - lo) * np.linspace(0.1, 0.9, self.K)[:, None]
        return spread, np.full(self.K, 0.2)

    def frames(self):
        for i in range(len(self.centers)):
            yield np.full((self.frame[0], self.frame[1], 1), i, np.int64)


def test_tracker_finds_a_small_subject_and_follows_it():
    """Too small to be seen in the whole frame: the search tiles find it within the frames it
    takes to read all 15 tiles, after which every frame is tracked with one read each."""
    centers = np.stack([100 + 6.0 * np.arange(40), 300 - 2.0 * np.arange(40)], -1)
    scene = _Scene(centers)
    tracker = Tracker(scene.predict)
    steps = [tracker.step(f) for f in scene.frames()]
    first = next(i for i, s in enumerate(steps) if s.status != "lost")
    assert first < math.ceil(15 / 4)
    assert all(s.status == "tracked" for s in steps[first + 1:])
    for i, s in enumerate(steps[first:], first):
        np.testing.assert_allclose(s.keypoints, scene.truth(i))
    reads = [sum(1 for j, _ in scene.calls if j == i) for i in range(len(centers))]
    assert reads[first + 1:] == [1] * (len(centers) - first - 1)
    assert tracker.counts == {"tracked": len(centers) - first - 1, "search": 1, "lost": first,
                              "reinitialized": 0, "widened": 0}


def test_tracker_reinitializes_after_the_subject_leaves_the_frame():
    """It walks right and out (frames 10-19 outside), comes back on the left: tracked before,
    re-initialized on the frame it left, lost while out, tracked again soon after it is back."""
    xs = np.concatenate([400 + 12.0 * np.arange(10), np.full(10, 900.0), np.linspace(150, 250, 15)])
    scene = _Scene(np.stack([xs, np.full(len(xs), 240.0)], -1))
    tracker = Tracker(scene.predict)
    steps = [tracker.step(f) for f in scene.frames()]
    statuses = [s.status for s in steps]
    found = next(i for i, s in enumerate(statuses) if s != "lost")
    assert statuses[found + 1:10] == ["tracked"] * (9 - found)
    assert all(s == "lost" for s in statuses[10:20]), statuses
    assert steps[10].reinitialized and tracker.counts["reinitialized"] == 1
    back = 20 + next(i for i, s in enumerate(statuses[20:]) if s != "lost")
    assert back <= 20 + math.ceil(15 / 4) and statuses[back] == "search"
    assert statuses[back + 1:] == ["tracked"] * (len(xs) - back - 1)


def test_a_given_box_is_where_the_tracker_searches():
    """With an initial box the search reads that box (no whole frame, no tiles), then
    confirms the read from the box of its keypoints."""
    centers = np.stack([np.full(6, 320.0), np.full(6, 240.0)], -1)
    scene = _Scene(centers)
    box = (270.0, 190.0, 100.0, 100.0)
    tracker = Tracker(scene.predict, init_box=box)
    steps = [tracker.step(f) for f in scene.frames()]
    assert scene.calls[:2] == [(0, box), (0, keypoint_box(scene.truth(0), np.ones(8), 0.5))]
    assert [s.status for s in steps] == ["search"] + ["tracked"] * 5
    assert len(scene.calls) == 7


class _EdgeScene:
    """A still upright subject of K points in a column (`size` px tall); a read window (the
    box padded by 1.25 as a square) sees the points inside it exactly, with confidence 0.9 if
    they are clear of its edge (a tenth of its side) and 0.3 near it; the points outside it
    are put on its edge with confidence 0.3: what a model does with a crop that cuts the
    subject (a crop of head and shoulders still reads with a mean confidence over 0.5)."""

    K = 8

    def __init__(self, size=120.0, center=(320.0, 240.0)):
        self.points = np.stack([np.full(self.K, center[0]),
                                center[1] + size * (np.linspace(0, 1, self.K) - 0.5)], -1)

    def predict(self, frame, box):
        side = 1.25 * max(box[2], box[3])
        c = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
        lo, hi = c - side / 2, c + side / 2
        clear = ((self.points >= lo + 0.1 * side) & (self.points <= hi - 0.1 * side)).all(-1)
        return np.clip(self.points, lo, hi), np.where(clear, 0.9, 0.3)


def test_a_crop_that_cuts_the_subject_grows_until_it_holds_it():
    """Started on the top half of the subject, the tracked crop grows (the points it cut,
    on its edge, frame the next box) until every point is read clear of the edge, and then
    holds: it never closes in on the part it saw first."""
    scene = _EdgeScene()
    top = scene.points[:3]
    tracker = Tracker(scene.predict, init_box=(300.0, top[0, 1], 40.0, top[-1, 1] - top[0, 1]))
    steps = [tracker.step(np.zeros((480, 640, 3), np.uint8)) for _ in range(12)]
    assert [s.status for s in steps] == ["search"] + ["tracked"] * 11
    whole = next((i for i, s in enumerate(steps) if (s.confidence == 0.9).all()), None)
    assert whole is not None and whole <= 8, [s.confidence for s in steps]
    for s in steps[whole:]:
        np.testing.assert_allclose(s.keypoints, scene.points)
        assert (s.confidence == 0.9).all()


class _FramingScene:
    """A subject of K points in a column (`size` px tall) in a 240x320 frame, seen by a read
    window (the box padded by 1.25 as a square; the whole frame) that holds all of it exactly,
    with confidence 0.9 when it fills at least 35% of the window, 0.45 when it is smaller
    (seen at the wrong scale: under the 0.5 threshold); a window that holds only its top
    points (half of them or more) sees those exactly (0.9) and puts the others inside its
    lower edge (0.3): a wrong read with a mean over 0.5, what a search tile holding head and
    shoulders gives a model. Any other window reads guesses (0.2)."""

    K = 8

    def __init__(self, size=100.0, center=(270.0, 130.0)):
        self.points = np.stack([np.full(self.K, center[0]),
                                center[1] + size * (np.linspace(0, 1, self.K) - 0.5)], -1)
        self.size, self.calls = size, []

    def predict(self, frame, box):
        self.calls.append(box)
        h, w = frame.shape[:2]
        if box is None:
            lo, side = np.zeros(2), float(max(h, w))
        else:
            side = 1.25 * max(box[2], box[3])
            lo = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2]) - side / 2
        hi = lo + side
        inside = ((self.points >= lo) & (self.points <= hi)).all(-1)
        seen = int(inside.sum())
        if seen == self.K:
            return self.points.copy(), np.full(self.K, 0.9 if self.size >= 0.35 * side else 0.45)
        if seen >= self.K // 2 and inside[:seen].all() and self.size >= 0.35 * side:
            edge = np.array([self.points[0, 0], hi[1] - 1.0])
            return np.where(inside[:, None], self.points, edge), np.where(inside, 0.9, 0.3)
        return lo + (hi - lo) * np.linspace(0.1, 0.9, self.K)[:, None], np.full(self.K, 0.2)


def test_a_search_keeps_the_read_its_confirmation_frames_best():
    """The subject is too small in the whole frame (0.45) and its top half fills a search
    tile (a wrong read of 0.6, the most confident): read again from the box of its own
    keypoints, the tile's read grows but still cuts the subject (0.675), while the whole
    frame's read, from the box of its keypoints, holds the whole subject at a usable scale
    (0.9): that read is kept, and the next frame is tracked from its box. Without the
    confirmations the tracker would keep the tile's wrong read."""
    scene = _FramingScene()
    frame = np.zeros((240, 320, 3), np.uint8)
    tiles = search_tiles(frame.shape)
    whole, top = scene.predict(frame, None), scene.predict(frame, tiles[3])
    assert whole[1].mean() < 0.5 < top[1].mean() and not np.allclose(top[0], scene.points)
    assert all(scene.predict(frame, t)[1].mean() == 0.2 for t in tiles[:3])
    scene.calls.clear()
    tracker = Tracker(scene.predict)
    first = tracker.step(frame)
    share = BOX_POINT_SHARE * 0.5
    assert scene.calls == [None] + tiles[:4] + [keypoint_box(*top, share), keypoint_box(*whole, share)]
    grown = scene.predict(frame, scene.calls[5])
    assert top[1].mean() < grown[1].mean() < 0.9
    assert first.status == "search" and np.array_equal(first.keypoints, scene.points)
    assert first.box == keypoint_box(*whole, share)
    second = tracker.step(frame)
    assert second.status == "tracked" and scene.calls[-1] == keypoint_box(scene.points, np.ones(8), 0.5)


class _PartScene:
    """A still subject of K points in a column (100 px tall, top at y=80) in a 240x320 frame.
    A read window (the box padded by 1.25 as a square) that holds all of it reads it exactly
    (0.9); one that holds its top point but not all of it reads a whole figure squeezed into
    its middle (0.6): what the quickstart model does with a crop of head and shoulders. The
    squeezed figure's own box frames the same window again, so a tracker that keeps reading
    from the box of its points stays on the part."""

    K = 8

    def __init__(self):
        self.points = np.stack([np.full(self.K, 160.0), np.linspace(80.0, 180.0, self.K)], -1)
        self.calls = []

    def window(self, box):
        side = 1.25 * max(box[2], box[3])
        return np.array([box[0] + box[2] / 2, box[1] + box[3] / 2]) - side / 2, side

    def predict(self, frame, box):
        self.calls.append(box)
        lo, side = self.window(box)
        inside = ((self.points >= lo) & (self.points <= lo + side)).all(-1)
        if inside.all():
            return self.points.copy(), np.full(self.K, 0.9)
        assert inside[0], "the scene reads only windows that hold the top point"
        centre = lo + side / 2
        half = side / 2.8     # the points' box (6% a side) padded by 1.25 is this window again
        squeezed = np.stack([np.full(self.K, centre[0]),
                             np.linspace(centre[1] - half, centre[1] + half, self.K)], -1)
        return squeezed, np.full(self.K, 0.6)


def test_an_unsure_tracked_crop_on_part_of_the_subject_widens_to_all_of_it():
    """Started on the top of the subject (a 70 px window over y 77.5-147.5), the read (0.6:
    confident, not sure) frames its own window again: without a check the tracker would
    follow the part for ever. The first tracked frame reads the box 2x wider, which holds the
    subject (0.9), confirms it from the box of its keypoints and keeps it; from then on each
    frame is one sure read of the whole subject."""
    scene = _PartScene()
    part = (150.0, 112.5 - 28.0, 20.0, 56.0)
    first = scene.predict(None, part)
    assert first[1].mean() == 0.6 and not np.allclose(first[0], scene.points)
    again = keypoint_box(*first, BOX_POINT_SHARE * 0.5)
    lo, side = scene.window(again)
    np.testing.assert_allclose(np.r_[lo, side], np.r_[scene.window(part)[0], 70.0])   # a fixed point
    scene.calls.clear()
    tracker = Tracker(scene.predict, init_box=part)
    steps = [tracker.step(np.zeros((240, 320, 3), np.uint8)) for _ in range(5)]
    assert [s.status for s in steps] == ["search"] + ["tracked"] * 4
    assert not np.allclose(steps[0].keypoints, scene.points)
    for s in steps[1:]:
        np.testing.assert_allclose(s.keypoints, scene.points)
    assert tracker.counts["widened"] == 1
    # search: the box, its confirmation; frame 1: the box, 2x wider, its confirmation; then one
    assert len(scene.calls) == 2 + 3 + 3
    assert scene.calls[3] == widened(scene.calls[2], 2.0)


def test_a_lost_frame_leaves_no_box():
    """A lost read (two sure points, four guesses, mean under the threshold): the next frame
    is searched (the whole frame first), not read from the box of the lost frame's points."""
    sure = np.array([[100.0, 100.0], [140.0, 180.0]])
    guesses = np.array([[10.0, 10.0], [600.0, 400.0], [30.0, 420.0], [500.0, 20.0]])
    points, reads = np.concatenate([sure, guesses]), []

    def predict(frame, box):
        reads.append(box)
        guess = 0.4 if frame[0, 0, 0] else 0.26
        return points, np.array([0.9, 0.9] + [guess] * 4)

    tracker = Tracker(predict, tiles_per_search=0)
    assert tracker.step(np.zeros((480, 640, 1), np.int64)).status == "lost"
    assert reads == [None, keypoint_box(points, np.ones(6), 0.5)]
    assert tracker.step(np.ones((480, 640, 1), np.int64)).status == "search"
    assert reads[2] is None
    assert tracker.step(np.ones((480, 640, 1), np.int64)).status == "tracked"
    box = keypoint_box(points, np.ones(6), 0.5)      # read from it, then (0.57 is unsure) wider
    assert reads[4:] == [box, widened(box, 2.0)]


def test_smoothing_holds_through_a_lost_frame_and_restarts_on_a_search():
    """A lost frame's guesses never reach the filtered keypoints; a search (the subject found
    afresh, maybe elsewhere) is taken as it is."""
    pts, conf = np.array([[10.0, 20.0], [40.0, 60.0], [25.0, 90.0]]), np.full(3, 0.9)
    f = OneEuroFilter(conf_threshold=0.1)
    assert np.array_equal(smooth_step(f, 0.0, TrackStep(pts, conf, None, "search", False)), pts)
    assert np.array_equal(smooth_step(f, 0.04, TrackStep(pts + 200, conf, None, "lost", True)), pts)
    moved = smooth_step(f, 0.08, TrackStep(pts + 5, conf, (0, 0, 50, 50), "tracked", False))
    assert np.all((moved > pts) & (moved < pts + 5))
    elsewhere = pts + 300
    assert np.array_equal(smooth_step(f, 0.12, TrackStep(elsewhere, conf, None, "search", True)),
                          elsewhere)


# ------------------------------------------------------------------ the real model
def _clip(config, seed=0):
    from pipeline.synthetic import render_clip
    return list(render_clip(config, seed))


def test_quickstart_model_follows_a_figure_that_walks_out_and_back(quickstart_run):
    """A figure walks out of a 240x320 frame on the right and comes back (fast: a fifth of its
    height a frame): tracked while in view, lost while out, found again within a round of
    the 15 search tiles once it is whole in the frame, then followed (tracked, or found
    again on the same frame), always within a tenth of its size."""
    from model.predictor import Predictor
    from model.runner import load_runner
    from pipeline.synthetic import ClipConfig

    frames = _clip(ClipConfig(image_size=(240, 320), num_frames=30, sweep=0.7, laps=0.5,
                              pillar=False))
    runner = load_runner(quickstart_run.final_model)
    tracker = Tracker(Predictor(runner, runner.card).predict_image)
    steps = [tracker.step(f.image) for f in frames]
    statuses = [s.status for s in steps]
    out = [i for i, f in enumerate(frames) if not (f.visibility > 0).any()]
    assert len(out) >= 4, "the clip should have frames without the figure"
    assert all(statuses[i] == "lost" for i in out), statuses
    assert tracker.counts["reinitialized"] >= 1
    whole = next(i for i in range(out[-1], len(frames)) if (frames[i].visibility > 0).all())
    found = next(i for i in range(out[-1], len(frames)) if statuses[i] != "lost")
    assert found <= whole + math.ceil(15 / 4), statuses
    assert statuses[3:out[0] - 2] == ["tracked"] * (out[0] - 5), statuses
    assert "lost" not in statuses[found:] and statuses[found + 1:].count("tracked") >= 2, statuses
    errors = []
    for i in list(range(3, out[0] - 2)) + list(range(found, len(frames))):
        f, s = frames[i], steps[i]
        labelled = f.visibility > 0
        errors.append(np.linalg.norm(s.keypoints - f.keypoints, axis=-1)[labelled].mean()
                      / max(f.bbox[2], f.bbox[3]))
    assert np.mean(errors) < 0.1, errors


# ------------------------------------------------------------------ run.py predict
@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """A 12-frame 240x320 mp4 of the walking figure and its ground truth."""
    from pipeline.synthetic import ClipConfig, write_clip
    path = str(tmp_path_factory.mktemp("clip") / "walk.mp4")
    return path, write_clip(path, ClipConfig(image_size=(240, 320), num_frames=12, laps=0.04))


@pytest.mark.parametrize("name", ["final_int8.tflite", "saved_model"])
def test_predict_tracks_a_video_and_writes_its_csv(name, quickstart_exports, short_clip, tmp_path,
                                                   capsys):
    """--track --smooth --draw_box --csv on a TFLite and a SavedModel export: the video has
    every frame, the CSV one row per frame and keypoint (frame index, name, x, y, confidence),
    the figure is followed (tracked frames after the first search, near the truth) and
    nothing temporary is left."""
    import cv2

    from configs import builtin_spec
    folder, _ = quickstart_exports
    clip, truth = short_clip
    video, table = tmp_path / "pose.mp4", tmp_path / "out" / "pose.csv"
    code, out, err = _run(["predict", "--model_path", os.path.join(folder, name), "--input", clip,
                           "--output", str(video), "--track", "--smooth", "--beta", "2",
                           "--draw_box", "--csv", str(table)], capsys)
    assert code == 0, err
    assert "12 frame(s)" in out and str(table) in out
    assert re.search(r"tracking: \d+ frame\(s\) tracked, \d+ searched, \d+ lost .*, \d+ "
                     r"re-initialization\(s\), \d+ unsure frame\(s\) read wider", out), out
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    names = builtin_spec("coco").names
    assert rows[0] == ["frame", "keypoint", "x", "y", "confidence"] and len(rows) == 1 + 12 * 17
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(12) for _ in names]
    assert [r[1] for r in rows[1:]] == list(names) * 12
    xy = np.asarray([[float(r[2]), float(r[3])] for r in rows[1:]]).reshape(12, 17, 2)
    labelled = truth.visibility > 0
    errors = np.linalg.norm(xy - truth.keypoints, axis=-1)[labelled].reshape(-1)
    assert np.median(errors) < 0.1 * truth.boxes[:, 3].mean(), np.median(errors)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    assert not [n for n in os.listdir(tmp_path / "out") if ".tmp-" in n]


def test_predict_flag_mistakes_exit_2_before_the_model_loads(tmp_path, capsys):
    """Each mistake names the flag and the fix; the model path is never read."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read")
    base = ["predict", "--model_path", str(tmp_path / "never_loaded.keras"), "--input", str(clip)]
    cases = [(["--beta", "2"], "--beta tunes --smooth; add --smooth"),
             (["--min_cutoff", "1", "--beta", "2"], "--min_cutoff and --beta tune --smooth"),
             (["--track_threshold", "0.4"], "--track_threshold tunes --track; add --track"),
             (["--track", "--track_threshold", "1.5"], "--track_threshold 1.5: a mean confidence"),
             (["--smooth", "--min_cutoff", "0"], "--min_cutoff > 0 Hz"),
             (["--draw_box"], "--draw_box draws the box frames are read from: add --track or --bbox"),
             (["--track", "--csv", str(tmp_path / "k.txt")], "end the name in .csv"),
             (["--track", "--csv", str(tmp_path / "a.csv"), "--output", str(tmp_path / "a.csv")],
              "is also --output"),
             (["--max_frames", "0"], "--max_frames 0: give a positive number")]
    for extra, message in cases:
        code, out, err = _run(base + extra, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_video_tracking_benchmark_smoke(quickstart_run, tmp_path, capsys):
    """The benchmark's small run: its table, its key lines and the closing line of three
    ratios, tracking beating the whole frame on a small subject."""
    from benchmarks import video_tracking
    code = video_tracking.main(["--model_path", quickstart_run.final_model, "--out", str(tmp_path),
                                "--smoke", "--frames", "12"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    last = lines[-1]
    import re
    m = re.fullmatch(r"tracking/whole-frame error: ([\d.]+); smoothed/raw jitter: ([\d.]+); "
                     r"smoothed/raw error: ([\d.]+)", last)
    assert m, last
    a, b, c = (float(v) for v in m.groups())
    assert a < 1.0 and 0.0 < b and 0.0 < c
    for key in ("whole_frame_error_px", "tracking_error_px", "smoothed_jitter_px", "truth_jitter_px"):
        assert any(line.startswith(f"{key}: ") for line in lines), key
    assert os.path.isfile(tmp_path / "tracked.csv") and os.path.isfile(tmp_path / "video_tracking.json")


# ------------------------------------------------------------------ the clip renderer
def test_clip_is_deterministic_and_its_visibility_follows_the_scene():
    """Same config and seed, same frames; visibility 1 exactly for joints in the pillar's
    columns, 0 (at (0, 0)) for joints outside the frame; a frame without a figure pixel has
    an empty box and no joint in view; the figure stays under a quarter of the frame."""
    from pipeline.synthetic import ClipConfig, _pillar_columns
    config = ClipConfig(image_size=(120, 160), num_frames=40, sweep=0.6)
    a, b = _clip(config, seed=3), _clip(config, seed=3)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.keypoints, y.keypoints)
               for x, y in zip(a, b))
    assert not np.array_equal(a[0].image, _clip(dataclasses.replace(config, num_frames=1), seed=4)[0].image)
    x0, x1 = _pillar_columns(160, 80 + 0.5 * config.sweep * 160)
    seen = behind = 0
    for f in a:
        v, kx = f.visibility, f.keypoints[:, 0]
        assert np.all(f.keypoints[v == 0] == 0.0)
        in_pillar = (kx >= x0) & (kx < x1)
        assert np.all(in_pillar[v == 1]) and not np.any(in_pillar[v == 2])
        seen, behind = seen + int((v == 2).sum()), behind + int((v == 1).sum())
        if f.area == 0.0:
            assert f.bbox == (0.0, 0.0, 0.0, 0.0) and not v.any()
        assert f.bbox[2] * f.bbox[3] < 0.25 * 120 * 160
    assert seen and behind and any(f.area == 0.0 for f in a)
