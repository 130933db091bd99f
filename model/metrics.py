"""Accuracy measures: the original project's PCK, MPII PCKh, pixel errors, COCO OKS AP.

PCK follows the original tf-keras hourglass project so numbers compare with its table: a joint
is correct when its distance on the heatmap grid, divided by normalize = 6.4·((H+W)/2)/256,
is below 0.5 (3.2 heatmap px at 256×256 input), averaged over the joints that have a target.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

PCK_THRESHOLD = 0.5
PCK_NORMALIZE_AT_256 = 6.4


def pck_threshold_px(input_size: Sequence[int], stride: int) -> float:
    """The PCK distance threshold expressed in crop-input pixels."""
    h, w = input_size
    normalize = PCK_NORMALIZE_AT_256 * ((h + w) / 2.0) / 256.0
    return PCK_THRESHOLD * normalize * stride


def pck_counts(pred_xy, gt_xy, weights, threshold_px):
    """Per-keypoint (correct, total) sums over a batch; TF ops (run inside a replica).

    pred_xy, gt_xy: [B, K, 2] crop-input pixels; weights: [B, K] (> 0 means a target).
    """
    valid = tf.cast(weights > 0, tf.float32)
    dist = tf.norm(tf.cast(pred_xy, tf.float32) - tf.cast(gt_xy, tf.float32), axis=-1)
    correct = tf.cast(dist < threshold_px, tf.float32) * valid
    return tf.reduce_sum(correct, axis=0), tf.reduce_sum(valid, axis=0)


def ratio(correct: np.ndarray, total: np.ndarray) -> tuple[float, np.ndarray]:
    """Overall and per-keypoint ratios; keypoints with no target get NaN."""
    correct, total = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    overall = float(correct.sum() / total.sum()) if total.sum() > 0 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
    return overall, per


class KeypointAccumulator:
    """Collects predictions in original-image pixels and reports PCK, PCKh and pixel errors."""

    def __init__(self, num_keypoints: int, pck_threshold_px: float):
        self.k = num_keypoints
        self.threshold = pck_threshold_px
        self.correct = np.zeros(num_keypoints)
        self.total = np.zeros(num_keypoints)
        self.pckh_correct = np.zeros(num_keypoints)
        self.pckh_total = np.zeros(num_keypoints)
        self.errors: list[list[float]] = [[] for _ in range(num_keypoints)]

    def add(self, pred_crop, gt_crop, weights, pred_orig, gt_orig, visibility, head_size):
        """One batch: crop-pixel and original-pixel coordinates [B, K, 2]."""
        weights = np.asarray(weights) > 0
        d_crop = np.linalg.norm(np.asarray(pred_crop) - np.asarray(gt_crop), axis=-1)
        self.correct += ((d_crop < self.threshold) & weights).sum(0)
        self.total += weights.sum(0)
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


def coco_keypoint_ap(annotation_file: str, results: list[dict], sigmas=None) -> dict:
    """Score COCO-format results with pycocotools' COCOeval (iouType 'keypoints')."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ValueError("no predictions to score")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.params.imgIds = sorted({r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    return {n: float(v) for n, v in zip(names, ev.stats)}
