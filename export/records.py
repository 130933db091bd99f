"""Crops from converted TFRecords through the real eval parser, for calibration and checks.

The crops are exactly what evaluation feeds a model: `Parser.decode` then
`Parser.parse_eval` (crop mode, padding and input size from the model), uint8 RGB. So the
int8 calibration, the verification and the device see the same pixels.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from configs import KeypointSpec
from pipeline.records import INFO_NAME, RecordsError, data_loss_error, is_data_loss, read_dataset_info
from pipeline.records import split_files as checked_split_files

__all__ = ["Crops", "RecordsError", "read_info", "split_files", "pick_split", "check_spec", "eval_dataset",
           "load_crops"]


@dataclasses.dataclass(frozen=True)
class Crops:
    """Eval crops of one split: images uint8 [N, H, W, 3]; labels in crop pixels."""

    tfrecords: str
    split: str
    images: np.ndarray
    keypoints: np.ndarray   # float32 [N, K, 2]
    weights: np.ndarray     # float32 [N, K] (> 0: a target inside the crop)


def read_info(tfrecords: str) -> dict:
    """dataset_info.json of a folder written by convert_to_tfrecord.py (RecordsError otherwise)."""
    return read_dataset_info(tfrecords)


def split_files(tfrecords: str, split: str) -> list[str]:
    """The shard files of one split as dataset_info.json lists them, checked against their
    listed sizes; empty when the split does not exist or has no records (RecordsError when
    the folder does not match its dataset_info.json)."""
    info = read_dataset_info(tfrecords)
    if not int((info.get("counts") or {}).get(split, 0) or 0):
        return []
    return checked_split_files(tfrecords, split, info)


def pick_split(tfrecords: str, preferred: Sequence[str]) -> str:
    """The first split of `preferred` that has records (calibration: train, then val)."""
    for split in preferred:
        if split_files(tfrecords, split):
            return split
    raise RecordsError(f"{tfrecords}: no records of split(s) {', '.join(preferred)} in "
                       f"{tfrecords}/{INFO_NAME}")


def check_spec(info: dict, spec: KeypointSpec, tfrecords: str) -> None:
    """The records must have the model's keypoints, in the model's order."""
    names = list(info["keypoint_names"])
    if names != list(spec.names):
        raise RecordsError(
            f"{tfrecords}/{INFO_NAME} has {len(names)} keypoints ({', '.join(names)}) but the model "
            f"has {spec.num_keypoints} ({', '.join(spec.names)}); use records converted with the "
            f"model's keypoint files")


def eval_dataset(tfrecords: str, split: str, spec: KeypointSpec, input_size: Sequence[int],
                 stride: int, crop_mode: str, padding: float):
    """tf.data of (image uint8 [H, W, 3], labels) from `split`, one example per person,
    records drawn across shards in turn (the first N records cover every shard)."""
    import tensorflow as tf

    from pipeline import decoder
    from pipeline.parser import Parser, ParserConfig

    files = split_files(tfrecords, split)
    if not files:
        raise RecordsError(f"{tfrecords}/{INFO_NAME}: no {split} records")
    parser = Parser(ParserConfig(input_size=tuple(int(v) for v in input_size), stride=int(stride),
                                 crop_mode=crop_mode, padding=float(padding)), spec)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), block_length=1)
    return decoder.persons(ds).map(decoder.plain_graph(parser.parse_eval),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def load_crops(tfrecords: str, split: str, spec: KeypointSpec, input_size: Sequence[int],
               stride: int, crop_mode: str, padding: float,
               max_examples: Optional[int] = None) -> Crops:
    """The first `max_examples` (all when None) eval crops of `split` in memory."""
    check_spec(read_info(tfrecords), spec, tfrecords)
    ds = eval_dataset(tfrecords, split, spec, input_size, stride, crop_mode, padding)
    if max_examples is not None:
        ds = ds.take(int(max_examples))
    images, keypoints, weights = [], [], []
    try:
        for image, labels in ds.batch(64):
            images.append(image.numpy())
            keypoints.append(labels["keypoints"].numpy())
            weights.append(labels["weights"].numpy())
    except Exception as e:   # noqa: BLE001 - a damaged shard: name the file
        if is_data_loss(e):
            raise data_loss_error(tfrecords, e, [split]) from None
        raise
    if not images:
        raise RecordsError(f"{tfrecords}: the {split} split has no records")
    return Crops(tfrecords, split, np.concatenate(images), np.concatenate(keypoints),
                 np.concatenate(weights))
