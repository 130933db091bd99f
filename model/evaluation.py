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
    source); None builds the ground truth from the records."""
    from model.predictor import Predictor
    from pipeline.input_reader import InputReader
    from pipeline.parser import Parser
    from pipeline.records import split_files

    card = card or runner.card
    if card is None:
        if spec is None:
            raise ValueError(f"{runner.kind} model has no model card: pass its keypoint definition")
        card = default_card(runner, spec)
    changes = {k: v for k, v in (("keypoints", spec), ("crop_mode", crop_mode), ("padding", padding))
               if v is not None}
    card = card.replace(**changes) if changes else card
    spec = card.keypoints
    predictor = Predictor(runner, card, refine=refine, flip_test=flip_test)
    parser = Parser(card.eval_parser_config(), spec)
    reader = InputReader(file_pattern=split_files(tfrecords, split), parser=parser,
                         is_training=False, global_batch_size=batch_size)
    acc = KeypointAccumulator(spec.num_keypoints, pck_threshold_px(card.input_size, card.output_stride),
                              spec.names)
    results, truth, seen, started = [], [], 0, time.time()
    if save_result:
        os.makedirs(save_result, exist_ok=True)
    for images, labels in reader(None):
        images = images.numpy()
        coords, conf = predictor.crop_keypoints(images)
        orig = predictor.to_image(coords, labels["matrix"].numpy())
        acc.add(coords, labels["keypoints"].numpy(), labels["weights"].numpy(), orig,
                labels["orig_keypoints"].numpy(), labels["visibility"].numpy(),
                labels["head_size"].numpy())
        gt_orig, visibility = labels["orig_keypoints"].numpy(), labels["visibility"].numpy()
        areas, boxes = labels["area"].numpy(), labels["bbox"].numpy()
        for i in range(len(images)):
            image_id = int(labels["source_id"][i].numpy())
            results.append(coco_result(image_id, orig[i], conf[i]))
            truth.append(ground_truth_annotation(image_id, gt_orig[i], visibility[i], areas[i], boxes[i]))
            if save_result:
                _save_drawn(save_result, seen + i, images[i], coords[i], conf[i], spec)
        seen += len(images)
        if max_examples and seen >= max_examples:
            break
    metrics = acc.result(spec.names)
    metrics.update(examples=seen, model=runner.kind, flip_test=flip_test, refine=predictor.refine,
                   crop_mode=card.crop_mode, padding=card.padding, sigma=card.sigma,
                   decoder=runner.decodes, seconds=round(time.time() - started, 2))
    if result_json:
        atomic_write_json(result_json, results)
        metrics["result_json"] = result_json
    if spec.oks_sigmas is None:
        metrics["coco_unavailable"] = NO_SIGMAS
    elif results:
        ground_truth = annotations or coco_ground_truth(truth, spec)
        metrics["coco"] = coco_keypoint_ap(ground_truth, results, sigmas=spec.oks_sigmas)
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
