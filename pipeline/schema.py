"""TFRecord schema: one tf.train.Example per person instance.

Field names follow the TensorFlow Object Detection API / Model Garden where one exists, with
the same meaning (normalized boxes and keypoints, see ../shared/reference/stack-facts.md), so
other TF tools read our records. Pixel-unit values of our own live under
``image/object/keypoint_hg/``. All pixel values use the convention of ``pipeline.coords``
(0-based, pixel centres at +0.5).

| key | type | meaning |
|---|---|---|
| image/encoded | bytes | the original file bytes (JPEG kept as is; other formats re-encoded to PNG) |
| image/format | bytes | b"jpeg" or b"png" |
| image/height, image/width | int64 | image size in pixels |
| image/source_id | bytes | the image id as decimal text (COCO image_id, or a running id) |
| image/filename | bytes | file name relative to the image folder |
| image/object/bbox/xmin,ymin,xmax,ymax | float | person box normalized to [0, 1] by width/height |
| image/object/class/label | int64 | 1 |
| image/object/class/text | bytes | b"person" (or the object class of a custom set) |
| image/object/is_crowd | int64 | 0 (crowd instances are never written) |
| image/object/area | float | COCO segment area in px² (box area where there is none) |
| image/object/keypoint/x, y | float | K keypoints normalized to [0, 1] by width/height |
| image/object/keypoint/visibility | int64 | K values: 0 unlabelled, 1 labelled but occluded, 2 visible |
| image/object/keypoint/num | int64 | number of labelled keypoints (v > 0) |
| image/object/keypoint/text | bytes | K keypoint names |
| image/object/keypoint_hg/x, y | float | K keypoints in pixels (unlabelled: 0) |
| image/object/keypoint_hg/center | float | person centre [x, y] in pixels |
| image/object/keypoint_hg/scale | float | side of the person's square box / 200 px |
| image/object/keypoint_hg/bbox | float | person box [x, y, w, h] in pixels |
| image/object/keypoint_hg/head_size | float | PCKh head size px (0.6·head-box diagonal), -1 unknown |
| image/object/keypoint_hg/annotation_id | int64 | COCO annotation id, or the record's index in its source |
| image/hg/reencoded | int64 | 1 when the image bytes were re-encoded (not JPEG originally) |
| image/hg/schema_version | int64 | SCHEMA_VERSION |
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

SCHEMA_VERSION = 1

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
SOURCE_ID = "image/source_id"
FILENAME = "image/filename"
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
CLASS_LABEL = "image/object/class/label"
CLASS_TEXT = "image/object/class/text"
IS_CROWD = "image/object/is_crowd"
AREA = "image/object/area"
KP_X = "image/object/keypoint/x"
KP_Y = "image/object/keypoint/y"
KP_VISIBILITY = "image/object/keypoint/visibility"
KP_NUM = "image/object/keypoint/num"
KP_TEXT = "image/object/keypoint/text"
HG_X = "image/object/keypoint_hg/x"
HG_Y = "image/object/keypoint_hg/y"
HG_CENTER = "image/object/keypoint_hg/center"
HG_SCALE = "image/object/keypoint_hg/scale"
HG_BBOX = "image/object/keypoint_hg/bbox"
HG_HEAD_SIZE = "image/object/keypoint_hg/head_size"
HG_ANNOTATION_ID = "image/object/keypoint_hg/annotation_id"
REENCODED = "image/hg/reencoded"
VERSION = "image/hg/schema_version"

# How every field above is parsed, declared once: key -> (dtype, length, value when absent).
# Length 1 is a scalar, "K" one value per keypoint; a default of None makes the field required.
FIELDS = {
    ENCODED: ("string", 1, None),
    FORMAT: ("string", 1, None),
    HEIGHT: ("int64", 1, None),
    WIDTH: ("int64", 1, None),
    SOURCE_ID: ("string", 1, None),
    FILENAME: ("string", 1, ""),
    BBOX_XMIN: ("float32", 1, None),
    BBOX_YMIN: ("float32", 1, None),
    BBOX_XMAX: ("float32", 1, None),
    BBOX_YMAX: ("float32", 1, None),
    CLASS_LABEL: ("int64", 1, None),
    CLASS_TEXT: ("string", 1, None),
    IS_CROWD: ("int64", 1, None),
    AREA: ("float32", 1, None),
    KP_X: ("float32", "K", None),
    KP_Y: ("float32", "K", None),
    KP_VISIBILITY: ("int64", "K", None),
    KP_NUM: ("int64", 1, None),
    KP_TEXT: ("string", "K", None),
    HG_X: ("float32", "K", None),
    HG_Y: ("float32", "K", None),
    HG_CENTER: ("float32", 2, None),
    HG_SCALE: ("float32", 1, None),
    HG_BBOX: ("float32", 4, None),
    HG_HEAD_SIZE: ("float32", 1, -1.0),
    HG_ANNOTATION_ID: ("int64", 1, None),
    REENCODED: ("int64", 1, None),
    VERSION: ("int64", 1, None),
}


def parsing_spec(keys: Sequence[str] = tuple(FIELDS), num_keypoints: Optional[int] = None) -> dict:
    """``tf.io`` parsing spec of ``keys`` (default: every field) from ``FIELDS``. Per-keypoint
    fields have exactly ``num_keypoints`` values, or any number when it is None (the decoder
    checks their lengths against each other)."""
    import tensorflow as tf

    spec = {}
    for key in keys:
        dtype, length, default = FIELDS[key]
        if length == "K" and num_keypoints is None:
            spec[key] = tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)
        else:
            shape = [] if length == 1 else [num_keypoints if length == "K" else length]
            spec[key] = tf.io.FixedLenFeature(shape, dtype, default_value=default)
    return spec


@dataclasses.dataclass
class PersonRecord:
    """One person instance, in our pixel convention, before its image is read."""

    image_path: str                 # absolute path of the image file
    filename: str                   # path relative to the image folder (stored)
    image_id: int
    width: int
    height: int
    keypoints: np.ndarray           # (K, 3): x, y, v with v in {0, 1, 2}
    center: tuple[float, float]
    scale: float
    bbox: tuple[float, float, float, float]   # x, y, w, h in pixels
    annotation_id: int
    area: Optional[float] = None
    head_size: float = -1.0
    class_text: str = "person"


def _floats(values) -> "object":
    from tensorflow.core.example import feature_pb2
    return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(v) for v in values]))


def _ints(values) -> "object":
    from tensorflow.core.example import feature_pb2
    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))


def _bytes(values) -> "object":
    from tensorflow.core.example import feature_pb2
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
        value=[v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]))


def encode_example(record: PersonRecord, image_bytes: bytes, image_format: str,
                   keypoint_names: Sequence[str], reencoded: bool) -> bytes:
    """Serialize one person as a tf.train.Example (bytes). Pure protobuf: no TF graph."""
    from tensorflow.core.example import example_pb2, feature_pb2

    kp = np.asarray(record.keypoints, dtype=np.float64)
    vis = kp[:, 2].astype(np.int64)
    labelled = vis > 0
    xs = np.where(labelled, kp[:, 0], 0.0)
    ys = np.where(labelled, kp[:, 1], 0.0)
    w, h = float(record.width), float(record.height)
    bx, by, bw, bh = record.bbox
    area = record.area if record.area is not None else bw * bh
    feats = {
        ENCODED: _bytes([image_bytes]),
        FORMAT: _bytes([image_format]),
        HEIGHT: _ints([record.height]),
        WIDTH: _ints([record.width]),
        SOURCE_ID: _bytes([str(record.image_id)]),
        FILENAME: _bytes([record.filename]),
        BBOX_XMIN: _floats([bx / w]),
        BBOX_YMIN: _floats([by / h]),
        BBOX_XMAX: _floats([(bx + bw) / w]),
        BBOX_YMAX: _floats([(by + bh) / h]),
        CLASS_LABEL: _ints([1]),
        CLASS_TEXT: _bytes([record.class_text]),
        IS_CROWD: _ints([0]),
        AREA: _floats([area]),
        KP_X: _floats(xs / w),
        KP_Y: _floats(ys / h),
        KP_VISIBILITY: _ints(vis),
        KP_NUM: _ints([int(labelled.sum())]),
        KP_TEXT: _bytes(list(keypoint_names)),
        HG_X: _floats(xs),
        HG_Y: _floats(ys),
        HG_CENTER: _floats(record.center),
        HG_SCALE: _floats([record.scale]),
        HG_BBOX: _floats(record.bbox),
        HG_HEAD_SIZE: _floats([record.head_size]),
        HG_ANNOTATION_ID: _ints([record.annotation_id]),
        REENCODED: _ints([1 if reencoded else 0]),
        VERSION: _ints([SCHEMA_VERSION]),
    }
    example = example_pb2.Example(features=feature_pb2.Features(feature=feats))
    return example.SerializeToString(deterministic=True)  # sorted map keys: same bytes in every process
