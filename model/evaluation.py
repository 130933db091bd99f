"""Evaluate any model file on TFRecords: PCK (original metric), torso PCK (LSP), COCO OKS AP,
PCKh, pixel errors.

Predictions go through ``model.predictor.Predictor`` (the model card's crop and codec,
sub-pixel decode or the model's own decoder, optional flip test, inverse crop affine), so COCO
results and every pixel distance are in original-image pixels.

OKS AP needs the skeleton's sigmas (``KeypointSpec.oks_sigmas``): without them the metrics
say why (``coco_unavailable``) instead of scoring with invented sigmas. The ground truth is
the records' COCO source json when given (``annotations``), else built from the records
themselves (``coco_ground_truth``: one annotation per record, image id = source_id).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import numpy as np

from configs import KeypointSpec, atomic_write_json
from model.card import ModelCard
from model.hourglass import OUTPUT_STRIDE
from model.metrics import KeypointAccumulator, coco_keypoint_ap, coco_result, pck_threshold_px
from model.runner import Runner

NO_SIGMAS = ("the keypoint definition has no OKS sigmas, so there is no OKS AP; give "
             "--sigmas_path FILE ('name,sigma' a line, one per keypoint; COCO's 17 keypoints get "
             "COCO's sigmas without it)")


def default_card(runner: Runner, spec: KeypointSpec) -> ModelCard:
    """The card assumed for a model file that carries none: its geometry, the records'
    keypoints and the training defaults (box crop, padding 1.25, sigma 2, DARK)."""
    return ModelCard(keypoints=spec, input_size=tuple(runner.input_size),
                     output_stride=runner.stride or OUTPUT_STRIDE)


@dataclasses.dataclass
class Scoring:
    """One model to score in a pass of ``evaluate_models``, and how: ``evaluate_model``'s
    arguments of the same names."""

    runner: Runner
    spec: Optional[KeypointSpec] = None
    card: Optional[ModelCard] = None
    crop_mode: Optional[str] = None
    padding: Optional[float] = None
    flip_test: bool = False
    refine: Optional[str] = None
    result_json: Optional[str] = None
    save_result: Optional[str] = None

    def resolved_card(self) -> ModelCard:
        """The card the crop and codec come from: ``card``, else the runner's, else
        ``default_card``; ``spec``, ``crop_mode`` and ``padding`` replace its fields."""
        card = self.card or self.runner.card
        if card is None:
            if self.spec is None:
                raise ValueError(f"{self.runner.kind} model has no model card: pass its keypoint "
                                 f"definition")
            card = default_card(self.runner, self.spec)
        changes = {k: v for k, v in (("keypoints", self.spec), ("crop_mode", self.crop_mode),
                                     ("padding", self.padding)) if v is not None}
        return card.replace(**changes) if changes else card


def evaluate_model(runner: Runner, tfrecords: str, split: str, spec: Optional[KeypointSpec] = None,
                   *, card: Optional[ModelCard] = None, crop_mode: Optional[str] = None,
                   padding: Optional[float] = None, batch_size: int = 16, flip_test: bool = False,
                   refine: Optional[str] = None, result_json: Optional[str] = None,
                   annotations: Optional[str] = None, save_result: Optional[str] = None,
                   max_examples: Optional[int] = None) -> dict:
    """Metrics over every record of `split` (each exactly once); see ``model.metrics`` for
    the keys ('pck', 'pck_torso@0.2', 'pck_torso@0.2_per_keypoint', 'mean_error_px', 'coco'
    or 'coco_unavailable', ...). The crop and codec come from ``card`` (default: the runner's
    own card); ``spec`` (e.g. with sigmas given by flags), ``crop_mode`` and ``padding``
    replace the card's. ``annotations``: a COCO json to score OKS AP against (the records'
    source); None builds the ground truth from the records. ``max_examples``: stop after the
    batch that reaches it."""
    scoring = Scoring(runner, spec, card, crop_mode, padding, flip_test, refine, result_json,
                      save_result)
    return evaluate_models([scoring], tfrecords, split, batch_size=batch_size,
                           annotations=annotations, max_examples=max_examples)[0]


def evaluate_models(scorings: list[Scoring], tfrecords: str, split: str, *, batch_size: int = 16,
                    annotations: Optional[str] = None,
                    max_examples: Optional[int] = None) -> list[dict]:
    """``evaluate_model`` of each of ``scorings``, in that order, reading the records once for
    all the scorings that crop alike (one pass per distinct crop and keypoint definition):
    each model sees the same batches it would see alone, so its metrics are the same."""
    from pipeline.parser import Parser

    cards = [s.resolved_card() for s in scorings]
    passes: dict[tuple, list[int]] = {}      # (eval crop, keypoints) -> the scorings read alike
    for i, card in enumerate(cards):
        passes.setdefault((card.eval_parser_config(), card.keypoints), []).append(i)
    metrics: list[Optional[dict]] = [None] * len(scorings)
    for (parser_config, spec), members in passes.items():
        scorers = [_Scorer(scorings[i], cards[i]) for i in members]
        truth, seen, reading = [], 0, 0.0
        started = time.time()
        for images, labels in _eval_batches(Parser(parser_config, spec), tfrecords, split, batch_size):
            images = images.numpy()
            labels = {k: v.numpy() for k, v in labels.items()}
            reading += time.time() - started
            for scorer in scorers:
                scorer.add(images, labels, seen)
            for i in range(len(images)):
                truth.append(ground_truth_annotation(int(labels["source_id"][i]),
                                                     labels["orig_keypoints"][i],
                                                     labels["visibility"][i], labels["area"][i],
                                                     labels["bbox"][i]))
            seen += len(images)
            started = time.time()
            if max_examples and seen >= max_examples:
                break
        for i, scorer in zip(members, scorers):
            metrics[i] = scorer.result(truth, seen, reading, annotations)
    return metrics


def _eval_batches(parser, tfrecords: str, split: str, batch_size: int):
    from pipeline.input_reader import InputReader
    from pipeline.records import split_files
    reader = InputReader(file_pattern=split_files(tfrecords, split), parser=parser,
                         is_training=False, global_batch_size=batch_size)
    return reader(None)


class _Scorer:
    """One model's predictions over the batches of a pass, and its metrics."""

    def __init__(self, scoring: Scoring, card: ModelCard):
        from model.predictor import Predictor
        self.scoring, self.card, self.spec = scoring, card, card.keypoints
        self.predictor = Predictor(scoring.runner, card, refine=scoring.refine,
                                   flip_test=scoring.flip_test)
        self.acc = KeypointAccumulator(self.spec.num_keypoints,
                                       pck_threshold_px(card.input_size, card.output_stride),
                                       self.spec.names)
        self.results: list[dict] = []
        self.seconds = 0.0
        if scoring.save_result:
            os.makedirs(scoring.save_result, exist_ok=True)

    def add(self, images: np.ndarray, labels: dict, first_index: int) -> None:
        started = time.time()
        coords, conf = self.predictor.crop_keypoints(images)
        orig = self.predictor.to_image(coords, labels["matrix"])
        self.acc.add(coords, labels["keypoints"], labels["weights"], orig, labels["orig_keypoints"],
                     labels["visibility"], labels["head_size"])
        for i in range(len(images)):
            self.results.append(coco_result(int(labels["source_id"][i]), orig[i], conf[i]))
            if self.scoring.save_result:
                _save_drawn(self.scoring.save_result, first_index + i, images[i], coords[i], conf[i],
                            self.spec)
        self.seconds += time.time() - started

    def result(self, truth: list[dict], seen: int, reading_seconds: float,
               annotations: Optional[str]) -> dict:
        s, spec = self.scoring, self.spec
        metrics = self.acc.result(spec.names)
        metrics.update(examples=seen, model=s.runner.kind, flip_test=s.flip_test,
                       refine=self.predictor.refine, crop_mode=self.card.crop_mode,
                       padding=self.card.padding, sigma=self.card.sigma, decoder=s.runner.decodes,
                       seconds=round(self.seconds + reading_seconds, 2))
        if s.result_json:
            atomic_write_json(s.result_json, self.results)
            metrics["result_json"] = s.result_json
        if spec.oks_sigmas is None:
            metrics["coco_unavailable"] = NO_SIGMAS
        elif self.results:
            ground_truth = annotations or coco_ground_truth(truth, spec)
            metrics["coco"] = coco_keypoint_ap(ground_truth, self.results, sigmas=spec.oks_sigmas)
            metrics["coco_ground_truth"] = annotations or "records"
        else:
            metrics["coco_unavailable"] = "no example was evaluated"
        return metrics


def ground_truth_annotation(image_id: int, keypoints, visibility, area: float, bbox) -> dict:
    """One record as a COCO keypoints annotation (original pixels; id set by coco_ground_truth)."""
    keypoints, visibility = np.asarray(keypoints, np.float64), np.asarray(visibility, np.int64)
    labelled = visibility > 0
    kps = np.concatenate([np.where(labelled[:, None], keypoints, 0.0),
                          np.where(labelled, visibility, 0)[:, None]], axis=1)
    return {"image_id": int(image_id), "category_id": 1, "iscrowd": 0,
            "keypoints": [float(v) for v in kps.reshape(-1)], "num_keypoints": int(labelled.sum()),
            "area": float(area), "bbox": [float(v) for v in bbox]}


def coco_ground_truth(annotations: list[dict], spec: KeypointSpec) -> dict:
    """A COCO keypoints dataset (images, annotations, categories) from ground_truth_annotation
    entries: annotation ids 1.. (COCOeval treats id 0 as unmatched), iscrowd 0."""
    anns = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
    images = [{"id": i} for i in sorted({a["image_id"] for a in anns})]
    category = {"id": 1, "name": "person", "keypoints": list(spec.names),
                "skeleton": [[a + 1, b + 1] for a, b, _ in spec.skeleton]}
    return {"images": images, "annotations": anns, "categories": [category]}


def _save_drawn(folder: str, index: int, image, coords, conf, spec: KeypointSpec) -> None:
    import cv2

    from model.draw import draw_skeleton
    drawn = draw_skeleton(image, coords, conf > 0.1, spec)
    cv2.imwrite(os.path.join(folder, f"{index:06d}.jpg"), drawn[..., ::-1])
