"""TFRecord schema, version 2: one tf.train.Example per image, holding all its persons.

This is the TensorFlow Object Detection API / Model Garden layout: image fields once,
per-instance fields as lists with one entry per person (N), per-keypoint fields concatenated
person after person (N·K values). Names follow those tools wherever one exists, with the same
meaning (normalized boxes and keypoints, see ../shared/reference/stack-facts.md), so other TF
tools read our records; pixel-unit values of our own live under ``image/object/keypoint_hg/``.
All pixel values use the convention of ``pipeline.coords`` (0-based, pixel centres at +0.5).

| key | per | type | meaning |
|---|---|---|---|
| image/encoded | image | bytes | the original file bytes (JPEG kept as is; other formats re-encoded to PNG) |
| image/format | image | bytes | b"jpeg" or b"png" |
| image/height, image/width | image | int64 | image size in pixels |
| image/source_id | image | bytes | the image id as decimal text (COCO image_id, or a running id) |
| image/filename | image | bytes | file name relative to the image folder |
| image/object/bbox/xmin,ymin,xmax,ymax | person | float | box normalized to [0, 1] by width/height |
| image/object/class/label | person | int64 | 1 |
| image/object/class/text | person | bytes | b"person" (or the object class of a custom set) |
| image/object/is_crowd | person | int64 | 0 (crowd instances are never written) |
| image/object/area | person | float | COCO segment area in px² (box area where there is none) |
| image/object/keypoint/x, y | person × K | float | keypoints normalized to [0, 1] by width/height |
| image/object/keypoint/visibility | person × K | int64 | 0 unlabelled, 1 labelled but occluded, 2 visible |
| image/object/keypoint/num | person | int64 | number of labelled keypoints (v > 0) |
| image/object/keypoint/text | person × K | bytes | the K keypoint names, once per person |
| image/object/keypoint_hg/x, y | person × K | float | keypoints in pixels (unlabelled: 0) |
| image/object/keypoint_hg/center | person × 2 | float | person centre [x, y] in pixels |
| image/object/keypoint_hg/scale | person | float | side of the person's square box / 200 px |
| image/object/keypoint_hg/bbox | person × 4 | float | person box [x, y, w, h] in pixels |
| image/object/keypoint_hg/head_size | person | float | PCKh head size px (0.6·head diagonal), -1 unknown |
| image/object/keypoint_hg/annotation_id | person | int64 | COCO annotation id, or the index in its source |
| image/hg/reencoded | image | int64 | 1 when the image bytes were re-encoded (not JPEG originally) |
| image/hg/schema_version | image | int64 | SCHEMA_VERSION |

Version 1 wrote one Example per person with the same fields (N = 1), so it is the special
case N = 1 of this layout and reads unchanged (``person_examples`` writes it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)   # version 1: one person per Example (N = 1)

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

# How every field above is parsed, declared once: key -> (dtype, per, width, value when absent).
# per "image": one value; per "person": ``width`` values per person, "K" one per keypoint.
# A default of None makes the field required.
FIELDS = {
    ENCODED: ("string", "image", 1, None),
    FORMAT: ("string", "image", 1, None),
    HEIGHT: ("int64", "image", 1, None),
    WIDTH: ("int64", "image", 1, None),
    SOURCE_ID: ("string", "image", 1, None),
    FILENAME: ("string", "image", 1, ""),
    BBOX_XMIN: ("float32", "person", 1, None),
    BBOX_YMIN: ("float32", "person", 1, None),
    BBOX_XMAX: ("float32", "person", 1, None),
    BBOX_YMAX: ("float32", "person", 1, None),
    CLASS_LABEL: ("int64", "person", 1, None),
    CLASS_TEXT: ("string", "person", 1, None),
    IS_CROWD: ("int64", "person", 1, None),
    AREA: ("float32", "person", 1, None),
    KP_X: ("float32", "person", "K", None),
    KP_Y: ("float32", "person", "K", None),
    KP_VISIBILITY: ("int64", "person", "K", None),
    KP_NUM: ("int64", "person", 1, None),
    KP_TEXT: ("string", "person", "K", None),
    HG_X: ("float32", "person", "K", None),
    HG_Y: ("float32", "person", "K", None),
    HG_CENTER: ("float32", "person", 2, None),
    HG_SCALE: ("float32", "person", 1, None),
    HG_BBOX: ("float32", "person", 4, None),
    HG_HEAD_SIZE: ("float32", "person", 1, -1.0),
    HG_ANNOTATION_ID: ("int64", "person", 1, None),
    REENCODED: ("int64", "image", 1, None),
    VERSION: ("int64", "image", 1, None),
}
IMAGE_KEYS = tuple(k for k, v in FIELDS.items() if v[1] == "image")
PERSON_KEYS = tuple(k for k, v in FIELDS.items() if v[1] == "person")


def parsing_spec(keys: Sequence[str] = tuple(FIELDS)) -> dict:
    """``tf.io`` parsing spec of ``keys`` (default: every field) from ``FIELDS``: image fields
    as scalars, person fields as flat lists of any length (N persons × width; the decoder
    checks the lengths against each other)."""
    import tensorflow as tf

    spec = {}
    for key in keys:
        dtype, per, _, default = FIELDS[key]
        if per == "person":
            spec[key] = tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)
        else:
            spec[key] = tf.io.FixedLenFeature([], dtype, default_value=default)
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


def person_features(record: PersonRecord, keypoint_names: Sequence[str]) -> dict:
    """The per-person field values of ``record`` (key -> list), checked: raises ValueError or
    TypeError for a value that cannot be stored (the converter skips that person)."""
    kp = np.asarray(record.keypoints, dtype=np.float64)
    if kp.ndim != 2 or kp.shape != (len(keypoint_names), 3):
        raise ValueError(f"keypoints of shape {kp.shape}, expected ({len(keypoint_names)}, 3)")
    vis = kp[:, 2].astype(np.int64)
    labelled = vis > 0
    xs = np.where(labelled, kp[:, 0], 0.0)
    ys = np.where(labelled, kp[:, 1], 0.0)
    w, h = float(record.width), float(record.height)
    bx, by, bw, bh = (float(v) for v in record.bbox)
    area = record.area if record.area is not None else bw * bh
    values = {
        BBOX_XMIN: [bx / w], BBOX_YMIN: [by / h], BBOX_XMAX: [(bx + bw) / w], BBOX_YMAX: [(by + bh) / h],
        CLASS_LABEL: [1], CLASS_TEXT: [record.class_text], IS_CROWD: [0], AREA: [float(area)],
        KP_X: list(xs / w), KP_Y: list(ys / h), KP_VISIBILITY: [int(v) for v in vis],
        KP_NUM: [int(labelled.sum())], KP_TEXT: list(keypoint_names),
        HG_X: list(xs), HG_Y: list(ys), HG_CENTER: [float(v) for v in record.center],
        HG_SCALE: [float(record.scale)], HG_BBOX: [bx, by, bw, bh],
        HG_HEAD_SIZE: [float(record.head_size)], HG_ANNOTATION_ID: [int(record.annotation_id)],
    }
    for key, vals in values.items():
        dtype, _, width, _ = FIELDS[key]
        if len(vals) != (len(keypoint_names) if width == "K" else width):
            raise ValueError(f"{key}: {len(vals)} values")
        if dtype == "float32" and not np.all(np.isfinite(np.asarray(vals, np.float64))):
            raise ValueError(f"{key}: not finite ({vals})")
    return values


def encode_example(records: Sequence[PersonRecord], image_bytes: bytes, image_format: str,
                   keypoint_names: Sequence[str], reencoded: bool) -> bytes:
    """Serialize one image and its persons (``records``, all of that image, at least one) as a
    tf.train.Example (bytes). Pure protobuf: no TF graph."""
    persons = [person_features(r, keypoint_names) for r in records]
    return encode_features(records[0] if records else None, persons, image_bytes, image_format, reencoded)


def encode_features(record: Optional[PersonRecord], persons: Sequence[dict], image_bytes: bytes,
                    image_format: str, reencoded: bool) -> bytes:
    """``encode_example`` of persons already checked by ``person_features``; the image fields
    come from ``record`` (any person of the image)."""
    if not persons:
        raise ValueError("an Example holds at least one person")
    values = {
        ENCODED: [image_bytes], FORMAT: [image_format], HEIGHT: [record.height], WIDTH: [record.width],
        SOURCE_ID: [str(record.image_id)], FILENAME: [record.filename],
        REENCODED: [1 if reencoded else 0], VERSION: [SCHEMA_VERSION],
    }
    for key in PERSON_KEYS:
        values[key] = [v for person in persons for v in person[key]]
    return _serialize(values)


def person_examples(serialized: bytes) -> list[bytes]:
    """The persons of one Example as Examples of one person each (schema version 1: what the
    converter wrote before version 2), in order."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    values = {key: _values(example, key) for key in FIELDS}
    count = len(values[HG_SCALE])
    if count == 0:
        return []
    out = []
    for i in range(count):
        person = {key: values[key] for key in IMAGE_KEYS}
        person[VERSION] = [1]
        for key in PERSON_KEYS:
            vals = values[key]
            width = len(vals) // count
            person[key] = vals[i * width:(i + 1) * width]
        out.append(_serialize(person))
    return out


def _values(example, key: str) -> list:
    if key not in example.features.feature:
        return []
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _serialize(values: dict) -> bytes:
    from tensorflow.core.example import example_pb2, feature_pb2

    maker = {"float32": _floats, "int64": _ints, "string": _bytes}
    feats = {key: maker[FIELDS[key][0]](vals) for key, vals in values.items()
             if vals or FIELDS[key][3] is None}
    example = example_pb2.Example(features=feature_pb2.Features(feature=feats))
    return example.SerializeToString(deterministic=True)  # sorted map keys: same bytes in every process
