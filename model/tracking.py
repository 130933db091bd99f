"""Video without a detector: a crop that follows one subject, and steady keypoints.

A *frame predictor* is any callable ``(frame_rgb, box) -> (keypoints [K, 2], confidence [K])``
with keypoints in frame pixels (``pipeline.coords``: 0-based, pixel centres at +0.5) and
``box`` = (x, y, w, h) in frame pixels, or None for the whole frame letterboxed.
``model.predictor.Predictor.predict_image`` is one (the training crop: the box padded by the
model card's padding and widened to the model's aspect); a one-file pipeline model, which
takes the frame and the box itself (``model.runner.PipelineRunner``), is another.

``Tracker`` (what MoveNet and BlazePose do without a detector): the first frame, or a frame
after the subject was lost, is searched: read whole (or from a given box); each next frame
is read from the box of the previous frame's keypoints, widened by ``BOX_MARGIN`` (joints
lie inside the body: a head reaches above its eyes), which the predictor then pads and widens
as in training. The box holds every keypoint of at least ``BOX_POINT_SHARE`` x the tracking
threshold: a joint near the edge of a tight crop loses confidence first, and a box of only
the surely-seen joints would frame a smaller crop, lose the next joints, and close in on part
of the subject (a crop of head and shoulders stays confident enough to be kept). When a
frame's mean confidence falls below the threshold the tracker re-initializes: the same frame
is searched again. A subject small in the frame is not found in the whole frame (it is a few
pixels of the model's input), so when the whole frame is not confident a search also reads a
few ``search_tiles`` (squares of half the frame's shorter side, overlapping by half), the
next ones in turn on each searched frame. A read of a window that frames the subject badly
(a tile holding its upper half, the whole frame where it is small) can be as confident as a
good one, and a tracker that keeps it follows the wrong crop; so a search *confirms* its
``CONFIRM_READS`` most confident reads, each read again from the box of its own keypoints
(the box the next frame would be read from), and keeps the most confident read of all: a
subject seen at the wrong scale is locked on to within the frame, and a badly framed read
loses to a well framed one. A tracked crop can still settle on part of the subject (a
search that kept a read of head and shoulders, tracked from the box of its own points, stays
there: the model reads the part as a whole figure, though less surely than the whole): so a
tracked read under the *sure* level (``SURE_SHARE`` of the way from the threshold to 1) is
checked against the previous box widened ``WIDEN`` x about its centre, which holds the whole
subject; when the wider read is more confident, it is confirmed from the box of its own
keypoints and the most confident of the three reads is kept. A lost frame leaves no box (its
half-confident points are guesses): the next frame is searched.

``OneEuroFilter`` (Casiez, Roussel and Vogel, CHI 2012) in frame pixels, moving with the
subject: the centre of its confident keypoints is filtered apart from each keypoint's motion
within the subject, so a walking subject does not lag by its stride; speeds are measured in
subject sizes per second, so that one setting suits small and large subjects; a point below
its confidence threshold keeps its last filtered position instead of dragging it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np

Box = tuple[float, float, float, float]
FramePredictor = Callable[[np.ndarray, Optional[Box]], tuple[np.ndarray, np.ndarray]]

DEFAULT_TRACK_THRESHOLD = 0.5   # mean confidence under which the subject counts as lost
TILES_PER_SEARCH = 4            # search tiles read per searched frame (after the whole frame)
BOX_MARGIN = 0.06               # keypoints' box widened by this x its longer side, each side
BOX_POINT_SHARE = 0.5           # a keypoint frames the next box from this x the threshold
CONFIRM_READS = 2               # a search's most confident reads read again from their own box
SURE_SHARE = 0.5                # a tracked read is sure from threshold + this x (1 - threshold)
WIDEN = 2.0                     # an unsure tracked read is checked against its box this x wider
DEFAULT_MIN_CUTOFF = 1.0        # Hz: cutoff of a still keypoint
DEFAULT_BETA = 4.0              # cutoff rise per subject size per second of keypoint speed
D_CUTOFF = 1.0                  # Hz: cutoff of the speed estimate (the paper's default)
STATUSES = ("tracked", "search", "lost")


def min_points(num_keypoints: int) -> int:
    """How many confident keypoints make a box: a quarter of them, at least 2."""
    return max(2, int(math.ceil(num_keypoints / 4)))


def keypoint_box(keypoints: np.ndarray, confidence: np.ndarray, threshold: float,
                 margin: float = BOX_MARGIN) -> Optional[Box]:
    """The box (x, y, w, h) of the keypoints whose confidence is >= `threshold`, each side
    moved out by `margin` x the box's longer side; None when fewer than ``min_points`` are
    confident (or finite) or they all coincide."""
    keypoints = np.asarray(keypoints, np.float64)
    ok = (np.asarray(confidence) >= threshold) & np.isfinite(keypoints).all(-1)
    if ok.sum() < min_points(len(keypoints)):
        return None
    lo, hi = keypoints[ok].min(0), keypoints[ok].max(0)
    side = float((hi - lo).max())
    if side <= 0.0:
        return None
    lo, hi = lo - margin * side, hi + margin * side
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def widened(box: Box, factor: float) -> Box:
    """`box` (x, y, w, h) scaled by `factor` about its centre."""
    x, y, w, h = box
    return x + 0.5 * w * (1.0 - factor), y + 0.5 * h * (1.0 - factor), w * factor, h * factor


def search_tiles(frame_shape) -> list[Box]:
    """Squares (x, y, w, h) of half the frame's shorter side, overlapping by half a side,
    covering the frame (the last row and column flush with its edges), row by row."""
    h, w = (float(v) for v in frame_shape[:2])
    side = min(h, w) / 2.0

    def starts(length: float) -> list[float]:
        count = max(1, int(math.ceil((length - side) / (side / 2.0))) + 1)
        return [min(i * side / 2.0, length - side) for i in range(count)]

    return [(x, y, side, side) for y in starts(h) for x in starts(w)]


@dataclasses.dataclass(frozen=True)
class TrackStep:
    """One frame's result: keypoints [K, 2] (frame px), confidence [K], the box they were
    read from (None: the whole frame), how (``STATUSES``: "tracked" from the previous
    frame's box; "search" found by a search read: the whole frame, the initial box or a
    search tile; "lost" mean confidence under the threshold whatever was read) and whether
    the previous frame's box failed on this frame first (a re-initialization)."""

    keypoints: np.ndarray
    confidence: np.ndarray
    box: Optional[Box]
    status: str
    reinitialized: bool


class Tracker:
    """Follows one subject through consecutive frames (see the module docstring).

    ``step(frame)`` promises: one predictor call when the previous frame gave a box and this
    frame's read of it is sure; two when that read is confident but unsure and the box
    widened ``WIDEN`` x reads less surely (three when it reads more surely: the wider read is
    confirmed, and the most confident of the three is kept); otherwise a search (after the
    failed box: a re-initialization), which reads `init_box` (None: the whole frame) and,
    only when that is not confident and no `init_box` was given, `tiles_per_search` more
    ``search_tiles`` in turn, then reads the box of the keypoints of each of its
    ``CONFIRM_READS`` most confident reads, and keeps the read of highest mean confidence
    (the failed box's when nothing beats it: a subject behind an occluder keeps its
    keypoints). A lost frame leaves no box: the next frame is a search. ``counts`` holds the
    frames of each status, the re-initializations and the tracked frames read wider
    ("widened")."""

    def __init__(self, predict: FramePredictor, threshold: float = DEFAULT_TRACK_THRESHOLD,
                 init_box: Optional[Box] = None, margin: float = BOX_MARGIN,
                 tiles_per_search: int = TILES_PER_SEARCH):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"the tracking threshold is a mean confidence in (0, 1), got {threshold}")
        self.predict, self.threshold, self.init_box, self.margin = predict, threshold, init_box, margin
        self.tiles_per_search = tiles_per_search
        self.sure = threshold + SURE_SHARE * (1.0 - threshold)
        self.counts = {**{s: 0 for s in STATUSES}, "reinitialized": 0, "widened": 0}
        self._box: Optional[Box] = None
        self._next_tile = 0

    def reset(self) -> None:
        """Forget the subject: the next frame is a search."""
        self._box = None

    def step(self, frame: np.ndarray) -> TrackStep:
        tracked = None
        if self._box is not None:
            tracked = self._read(frame, self._box)
            if _mean(tracked) >= self.sure:
                return self._done(*tracked, "tracked", False)
            if _mean(tracked) >= self.threshold:
                return self._done(*self._checked_wider(frame, tracked), "tracked", False)
            self.counts["reinitialized"] += 1
        reads = [self._read(frame, self.init_box)]
        if _mean(reads[0]) < self.threshold and self.init_box is None:
            tiles = search_tiles(frame.shape)
            for _ in range(min(self.tiles_per_search, len(tiles))):
                reads.append(self._read(frame, tiles[self._next_tile]))
                self._next_tile = (self._next_tile + 1) % len(tiles)
        reads += self._confirm(frame, reads)
        best = max(reads, key=_mean)     # the first of equals: the whole frame before tiles
        if tracked is not None and _mean(tracked) >= _mean(best):
            best = tracked               # nothing better found: stay with the subject's box
        status = "search" if _mean(best) >= self.threshold else "lost"
        return self._done(*best, status, tracked is not None)

    def _checked_wider(self, frame, tracked):
        """The most confident of an unsure tracked read, the read of its box widened ``WIDEN``
        x and, when that one is more confident, its confirmation (the first of equals)."""
        self.counts["widened"] += 1
        wider = self._read(frame, widened(self._box, WIDEN))
        if _mean(wider) <= _mean(tracked):
            return tracked
        return max([tracked, wider] + self._confirm(frame, [wider]), key=_mean)

    def _confirm(self, frame, reads) -> list:
        """The reads of the boxes of the ``CONFIRM_READS`` most confident `reads`' keypoints."""
        ranked = sorted(reads, key=_mean, reverse=True)[:CONFIRM_READS]   # stable: equals in order
        boxes = [self._box_of(keypoints, confidence) for keypoints, confidence, _ in ranked]
        return [self._read(frame, box) for box in boxes if box is not None]

    def _box_of(self, keypoints, confidence) -> Optional[Box]:
        return keypoint_box(keypoints, confidence, BOX_POINT_SHARE * self.threshold, self.margin)

    def _read(self, frame, box) -> tuple[np.ndarray, np.ndarray, Optional[Box]]:
        keypoints, confidence = self.predict(frame, box)
        return np.asarray(keypoints, np.float64), np.asarray(confidence, np.float64), box

    def _done(self, keypoints, confidence, box, status, reinitialized) -> TrackStep:
        self._box = None if status == "lost" else self._box_of(keypoints, confidence)
        self.counts[status] += 1
        return TrackStep(keypoints, confidence, box, status, reinitialized)


def _mean(read) -> float:
    return float(np.mean(read[1]))


def _alpha(dt: np.ndarray, cutoff: np.ndarray) -> np.ndarray:
    """Smoothing factor of an exponential filter with this cutoff (Hz) at time step dt (s)."""
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * dt))


@dataclasses.dataclass(frozen=True)
class OneEuroSettings:
    """The filter's two parameters. ``min_cutoff`` (Hz): cutoff of a still keypoint; lower
    is steadier and lags more. ``beta``: how much the cutoff rises per subject size per
    second of keypoint speed; higher lags less on fast moves and lets more jitter through."""

    min_cutoff: float = DEFAULT_MIN_CUTOFF
    beta: float = DEFAULT_BETA

    def __post_init__(self):
        if not (self.min_cutoff > 0.0 and math.isfinite(self.min_cutoff)):
            raise ValueError(f"min_cutoff is a frequency in Hz > 0, got {self.min_cutoff}")
        if not (self.beta >= 0.0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be >= 0, got {self.beta}")


class OneEuroFilter:
    """One-Euro filter of K 2-D points that moves with the subject.

    ``filter(t, points, confidence)`` -> filtered points [K, 2]. The subject's common motion
    is filtered apart from each point's motion within it: the centre, the mean of the n
    confident points, goes through a One-Euro filter of its own, with the points'
    ``min_cutoff`` and sqrt(n) x their ``beta`` (its speed estimate is sqrt(n) x less noisy
    than one point's, so its cutoff can follow its speed that much more closely), and each
    confident point's filtered position is first carried by the filtered centre's move, then
    filtered towards its sample with the points' settings and its speed relative to the
    centre. A walking subject so lags by its limbs' motion only, not by its whole stride.
    With fewer than ``min_points`` confident points there is no centre and every point is
    filtered on its own.

    Promises: a point's first confident sample, and every sample of a constant signal, come
    out exactly as they went in; a point under ``conf_threshold`` (or not finite) is not fed:
    it comes out at its last filtered position (or as given if it has none yet) and its next
    confident sample is filtered over the whole time since its last one. Speeds are divided
    by the subject's size, the longer side of its confident points' extent (the last known
    one when too few are confident), so ``beta`` means the same for a small and a large
    subject (the output of a subject scaled and moved is the output scaled and moved); until
    a size is known the cutoff is ``min_cutoff``. When the set of confident points changes
    the centre is taken afresh (the filtered positions of the points that stay, the samples
    of those that join), so no point moves because another one came or went."""

    def __init__(self, settings: OneEuroSettings = OneEuroSettings(), conf_threshold: float = 0.1):
        self.settings, self.conf_threshold = settings, conf_threshold
        self.reset()

    def reset(self) -> None:
        """Forget every point (e.g. the subject was lost): the next samples pass unchanged."""
        self._x = self._dx = self._t = None
        self._size: Optional[float] = None
        self._centre = self._dcentre = self._tcentre = self._members = None

    def __call__(self, t: float, points: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64)
        ok = (np.asarray(confidence) >= self.conf_threshold) & np.isfinite(points).all(-1)
        if self._x is None:
            k = len(points)
            self._x, self._dx, self._t = np.zeros((k, 2)), np.zeros((k, 2)), np.full(k, np.nan)
        size = keypoint_box(points, confidence, self.conf_threshold, margin=0.0)
        if size is not None:
            self._size = max(size[2], size[3])
        started = ok & np.isfinite(self._t)
        if started.any() and (t <= self._t[started]).any():
            raise ValueError(f"the filter's times must increase: got t={t} after "
                             f"{self._t[started].max()}")
        carried = self._x[started] + self._centre_move(t, points, ok, started)
        first = ok & ~started
        self._x[first], self._dx[first], self._t[first] = points[first], 0.0, t
        if started.any():
            dt = t - self._t[started]
            x = points[started]
            dx, a = self._step(x, carried, self._dx[started], dt, 1.0)
            self._x[started] = carried + a * (x - carried)   # x == carried gives carried exactly
            self._dx[started], self._t[started] = dx, t
        return np.where(np.isfinite(self._t)[:, None], self._x, points)

    def _centre_move(self, t: float, points: np.ndarray, ok: np.ndarray, started: np.ndarray):
        """How far the filtered centre moves at time t (0 without a centre)."""
        if ok.sum() < min_points(len(points)):
            self._centre = None
            return 0.0
        centre = points[ok].mean(axis=0)
        if self._centre is None or not np.array_equal(ok, self._members):
            # Taken afresh: the filtered positions of the points that stay in the set, the
            # samples of those that join it (so their jump is not a move of the subject).
            stayed = started & (self._members if self._members is not None else False)
            self._centre = np.where(stayed[:, None], self._x, points)[ok].mean(axis=0)
            if self._dcentre is None:
                self._dcentre, self._tcentre = np.zeros(2), t
            self._members = ok
        if t <= self._tcentre:
            return 0.0
        scale = math.sqrt(ok.sum())
        dt = np.array([t - self._tcentre])
        before = self._centre
        dc, a = self._step(centre[None], before[None], self._dcentre[None], dt, scale)
        self._centre = before + a[0] * (centre - before)
        self._dcentre, self._tcentre = dc[0], t
        return self._centre - before

    def _step(self, x, x_prev, dx_prev, dt, beta_scale):
        """(new speed estimates, smoothing factors [N, 1]) of samples x against x_prev."""
        a_d = _alpha(dt, D_CUTOFF)[:, None]
        dx = dx_prev + a_d * ((x - x_prev) / dt[:, None] - dx_prev)
        speed = np.linalg.norm(dx, axis=-1) / self._size if self._size else 0.0
        cutoff = self.settings.min_cutoff + beta_scale * self.settings.beta * speed
        return dx, _alpha(dt, cutoff)[:, None]


def smooth_step(smoother: OneEuroFilter, t: float, step: TrackStep) -> np.ndarray:
    """The filtered keypoints of one tracked frame: a search (a subject found afresh, maybe
    elsewhere) restarts the filter; a lost frame feeds it nothing, so every point stays where
    it was last seen instead of following the lost frame's guesses."""
    if step.status == "search":
        smoother.reset()
    confidence = np.zeros_like(step.confidence) if step.status == "lost" else step.confidence
    return smoother(t, step.keypoints, confidence)
