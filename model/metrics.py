"""Accuracy measures: the original project's PCK, MPII PCKh, torso PCK (LSP), pixel errors,
COCO OKS AP.

PCK follows the original tf-keras hourglass project so numbers compare with its table: a joint
is correct when its distance on the heatmap grid, divided by normalize = 6.4·((H+W)/2)/256,
is below 0.5 (3.2 heatmap px at 256×256 input), averaged over the joints that have a target.

Torso PCK@alpha (the LSP convention): a labelled joint (visibility > 0) is correct when its
distance is below alpha × the example's torso size (``torso_size``: left_shoulder–right_hip
when both are labelled, else right_shoulder–left_hip, else the example is not scored). The
ratio is invariant under a similarity transform, so crop pixels and original pixels agree.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

PCK_THRESHOLD = 0.5
PCK_NORMALIZE_AT_256 = 6.4


def pck_threshold_px(input_size: Sequence[int], stride: int) -> float:
    """The PCK distance threshold expressed in crop-input pixels."""
    h, w = input_size
    normalize = PCK_NORMALIZE_AT_256 * ((h + w) / 2.0) / 256.0
    return PCK_THRESHOLD * normalize * stride


def pck_counts(pred_xy, gt_xy, weights, threshold_px, xp=np):
    """Per-keypoint (correct, total) sums over a batch: a keypoint with a target (weight > 0)
    is correct when its distance is below ``threshold_px``.

    pred_xy, gt_xy: [B, K, 2] crop-input pixels; weights: [B, K]. ``xp`` is numpy (what
    ``KeypointAccumulator`` uses for ``run.py eval``) or ``tf.experimental.numpy`` (the
    trainer's validation, inside a replica)."""
    valid = weights > 0
    d = pred_xy - gt_xy
    dist = xp.sqrt(xp.sum(d * d, axis=-1))
    ftype = dist.dtype
    correct = xp.sum(xp.asarray(xp.logical_and(dist < threshold_px, valid), dtype=ftype), axis=0)
    return correct, xp.sum(xp.asarray(valid, dtype=ftype), axis=0)


# The torso diagonals, in order of preference: the first one with both ends labelled is used.
TORSO_DIAGONALS = (("left_shoulder", "right_hip"), ("right_shoulder", "left_hip"))
TORSO_ALPHAS = (0.2, 0.1)


def torso_key(alpha: float) -> str:
    """The metric name of torso PCK at ``alpha``: 'pck_torso@0.2'."""
    return f"pck_torso@{alpha:g}"


def torso_diagonals(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Channel index pairs of the TORSO_DIAGONALS whose two names are in ``names``, in order of
    preference; () when the skeleton has no torso (torso PCK is then unavailable)."""
    index = {n: i for i, n in enumerate(names)}
    return tuple((index[a], index[b]) for a, b in TORSO_DIAGONALS if a in index and b in index)


def torso_unavailable_reason(names: Sequence[str]) -> str:
    return ("the keypoints name no torso diagonal (" + " or ".join("-".join(d) for d in TORSO_DIAGONALS)
            + f"); they are: {', '.join(names)}")


def torso_size(keypoints, labelled, diagonals, xp=np):
    """Torso size per example: the length of the first diagonal (index pairs from
    ``torso_diagonals``) whose two ends are labelled and apart, else NaN (not scored).

    keypoints [..., K, 2], labelled bool [..., K]; returns [...]. ``xp`` is numpy or
    ``tf.experimental.numpy`` (the same definition runs inside a tf.function)."""
    size = xp.full_like(keypoints[..., 0, 0], np.nan)
    for a, b in reversed(diagonals):          # the first diagonal is applied last: it wins
        d = keypoints[..., a, :] - keypoints[..., b, :]
        length = xp.sqrt(xp.sum(d * d, axis=-1))
        use = xp.logical_and(xp.logical_and(labelled[..., a], labelled[..., b]), length > 0)
        size = xp.where(use, length, size)
    return size


def torso_pck_counts(pred_xy, gt_xy, labelled, diagonals, alphas=TORSO_ALPHAS, xp=np):
    """Torso-PCK sums over a batch [B, K, 2] (numpy, or TF with xp=tf.experimental.numpy):
    correct [len(alphas), K], total [K] (labelled joints of scored examples), the number of
    examples scored and of examples without a torso. A joint is correct when its distance
    is below alpha × torso size."""
    torso = torso_size(gt_xy, labelled, diagonals, xp)                     # [B]
    has_torso = xp.isfinite(torso)
    scored = xp.logical_and(labelled, has_torso[:, None])                 # [B, K]
    d = pred_xy - gt_xy
    dist = xp.sqrt(xp.sum(d * d, axis=-1))
    safe = xp.where(has_torso, torso, xp.ones_like(torso))[:, None]
    ftype = dist.dtype
    correct = xp.stack([xp.sum(xp.asarray(xp.logical_and(dist < alpha * safe, scored), dtype=ftype), axis=0)
                        for alpha in alphas])
    total = xp.sum(xp.asarray(scored, dtype=ftype), axis=0)
    n_scored = xp.sum(xp.asarray(has_torso, dtype=ftype))
    n_without = xp.sum(xp.asarray(xp.logical_not(has_torso), dtype=ftype))
    return correct, total, n_scored, n_without


def torso_pck_metrics(names: Sequence[str], correct, total, n_scored, n_without,
                      alphas=TORSO_ALPHAS) -> dict:
    """The torso-PCK entries of a metrics dict from the sums of ``torso_pck_counts``:
    'pck_torso@A' (None when nothing was scored), 'pck_torso@A_per_keypoint' {name: value or
    None}, 'pck_torso_examples_scored', 'pck_torso_examples_without_torso'; or only
    'pck_torso_unavailable' (the reason) when the skeleton has no torso diagonal."""
    if not torso_diagonals(names):
        return {"pck_torso_unavailable": torso_unavailable_reason(names)}
    out = {}
    for alpha, c in zip(alphas, np.asarray(correct)):
        overall, per = ratio(c, total)
        out[torso_key(alpha)] = _num(overall)
        out[torso_key(alpha) + "_per_keypoint"] = {n: _num(v) for n, v in zip(names, per)}
    out["pck_torso_examples_scored"] = int(n_scored)
    out["pck_torso_examples_without_torso"] = int(n_without)
    if float(np.sum(total)) == 0:
        out["pck_torso_unavailable"] = (f"no example has a labelled torso diagonal "
                                        f"({int(n_without)} examples without one)")
    return out


def ratio(correct: np.ndarray, total: np.ndarray) -> tuple[float, np.ndarray]:
    """Overall and per-keypoint ratios; keypoints with no target get NaN."""
    correct, total = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    overall = float(correct.sum() / total.sum()) if total.sum() > 0 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
    return overall, per


class KeypointAccumulator:
    """Collects predictions in original-image pixels and reports PCK, PCKh and pixel errors."""

    def __init__(self, num_keypoints: int, pck_threshold_px: float,
                 names: Optional[Sequence[str]] = None):
        self.k = num_keypoints
        self.threshold = pck_threshold_px
        self.diagonals = torso_diagonals(names) if names is not None else ()
        self.torso_correct = np.zeros((len(TORSO_ALPHAS), num_keypoints))
        self.torso_total = np.zeros(num_keypoints)
        self.torso_examples = np.zeros(2)          # scored, without a torso
        self.correct = np.zeros(num_keypoints)
        self.total = np.zeros(num_keypoints)
        self.pckh_correct = np.zeros(num_keypoints)
        self.pckh_total = np.zeros(num_keypoints)
        self.errors: list[list[float]] = [[] for _ in range(num_keypoints)]

    def add(self, pred_crop, gt_crop, weights, pred_orig, gt_orig, visibility, head_size):
        """One batch: crop-pixel and original-pixel coordinates [B, K, 2]."""
        correct, total = pck_counts(np.asarray(pred_crop, np.float64), np.asarray(gt_crop, np.float64),
                                    np.asarray(weights), self.threshold)
        self.correct += correct
        self.total += total
        labelled = np.asarray(visibility) > 0
        d_orig = np.linalg.norm(np.asarray(pred_orig) - np.asarray(gt_orig), axis=-1)
        for k in range(self.k):
            self.errors[k].extend(d_orig[labelled[:, k], k].tolist())
        head = np.asarray(head_size).reshape(-1, 1)
        has_head = labelled & (head > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = d_orig / np.where(head > 0, head, 1.0) < 0.5
        self.pckh_correct += (ok & has_head).sum(0)
        self.pckh_total += has_head.sum(0)
        c, t, n_scored, n_without = torso_pck_counts(
            np.asarray(pred_orig, np.float64), np.asarray(gt_orig, np.float64), labelled,
            self.diagonals)
        self.torso_correct += c
        self.torso_total += t
        self.torso_examples += (n_scored, n_without)

    def result(self, names: Sequence[str]) -> dict:
        pck, pck_per = ratio(self.correct, self.total)
        out = {
            "pck": pck,
            "pck_per_keypoint": {n: _num(v) for n, v in zip(names, pck_per)},
            "num_keypoints_scored": int(self.total.sum()),
        }
        all_err = [e for errs in self.errors for e in errs]
        if all_err:
            out["mean_error_px"] = float(np.mean(all_err))
            out["median_error_px"] = float(np.median(all_err))
            out["error_px_per_keypoint"] = {
                n: {"mean": _num(np.mean(e)) if e else None, "median": _num(np.median(e)) if e else None}
                for n, e in zip(names, self.errors)}
        if self.pckh_total.sum() > 0:
            pckh, pckh_per = ratio(self.pckh_correct, self.pckh_total)
            out["pckh"] = pckh
            out["pckh_per_keypoint"] = {n: _num(v) for n, v in zip(names, pckh_per)}
        out.update(torso_pck_metrics(names, self.torso_correct, self.torso_total,
                                     *self.torso_examples))
        return out


def _num(v):
    v = float(v)
    return None if np.isnan(v) else v


def coco_result(image_id: int, keypoints_xy: np.ndarray, confidence: np.ndarray) -> dict:
    """One person in COCO's results format: keypoints in original-image pixels."""
    kps = np.concatenate([keypoints_xy, confidence[:, None]], axis=1)
    return {
        "image_id": int(image_id),
        "category_id": 1,
        "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
        "score": float(np.mean(confidence)),
    }


def coco_keypoint_ap(ground_truth, results: list[dict], sigmas: Sequence[float]) -> dict:
    """Score COCO-format results with pycocotools' COCOeval (iouType 'keypoints').

    ground_truth: a COCO keypoints json path, or the same content as a dict (``images``,
    ``annotations``, ``categories``); sigmas: one OKS sigma per keypoint, required (a
    skeleton without sigmas has no OKS AP)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ValueError("no predictions to score")
    if sigmas is None:
        raise ValueError("OKS AP needs one sigma per keypoint (a sigma file); none given")
    import contextlib
    import copy
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ground_truth, dict):
            gt = COCO()
            gt.dataset = copy.deepcopy(ground_truth)
            gt.createIndex()
        else:
            gt = COCO(ground_truth)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.params.imgIds = sorted({r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    return {n: float(v) for n, v in zip(names, ev.stats)}
