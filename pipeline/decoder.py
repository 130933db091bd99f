"""Serialized tf.train.Example (schema of ``pipeline.schema``) -> dict of tensors.

``decode(serialized)`` returns:

| key | dtype, shape | meaning |
|---|---|---|
| image | uint8 [H, W, 3] | RGB, the image decoded once (JPEG or PNG; grey/RGBA -> RGB) |
| height, width | int32 [] | image size stored in the record (checked against the image) |
| source_id | string [] | image id |
| filename | string [] | file name relative to the image folder |
| keypoints | float32 [K, 2] | pixels, ``pipeline.coords`` convention (unlabelled: 0) |
| visibility | int32 [K] | 0 unlabelled, 1 labelled-occluded, 2 visible |
| center | float32 [2] | person centre, pixels |
| scale | float32 [] | person square side / 200 px |
| bbox | float32 [4] | x, y, w, h pixels |
| head_size | float32 [] | PCKh head size px, -1 if unknown |
| annotation_id | int64 [] | annotation id |
| area | float32 [] | instance area px² |

Pure TF ops: usable inside ``tf.data.Dataset.map``. A record whose image size differs from
its stored height/width, or whose keypoint fields disagree in length, fails with an error
naming its filename and annotation id.
"""
from __future__ import annotations

import tensorflow as tf

from pipeline import schema

FEATURES = {
    schema.ENCODED: tf.io.FixedLenFeature([], tf.string),
    schema.HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    schema.WIDTH: tf.io.FixedLenFeature([], tf.int64),
    schema.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
    schema.FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.HG_X: tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
    schema.HG_Y: tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
    schema.KP_VISIBILITY: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    schema.HG_CENTER: tf.io.FixedLenFeature([2], tf.float32),
    schema.HG_SCALE: tf.io.FixedLenFeature([], tf.float32),
    schema.HG_BBOX: tf.io.FixedLenFeature([4], tf.float32),
    schema.HG_HEAD_SIZE: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
    schema.HG_ANNOTATION_ID: tf.io.FixedLenFeature([], tf.int64),
    schema.AREA: tf.io.FixedLenFeature([], tf.float32),
}


def decode(serialized) -> dict:
    """One serialized Example (tf.string scalar) -> dict of tensors (see module docstring)."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    out = {
        "height": tf.cast(parsed[schema.HEIGHT], tf.int32),
        "width": tf.cast(parsed[schema.WIDTH], tf.int32),
        "source_id": parsed[schema.SOURCE_ID],
        "filename": parsed[schema.FILENAME],
        "center": parsed[schema.HG_CENTER],
        "scale": parsed[schema.HG_SCALE],
        "bbox": parsed[schema.HG_BBOX],
        "head_size": parsed[schema.HG_HEAD_SIZE],
        "annotation_id": parsed[schema.HG_ANNOTATION_ID],
        "area": parsed[schema.AREA],
    }
    out["keypoints"], out["visibility"] = _decode_keypoints(parsed, out)
    out["image"] = _decode_image(parsed[schema.ENCODED], out)
    return out


def _where(out: dict) -> list:
    return ["file:", out["filename"], "source_id:", out["source_id"],
            "annotation_id:", out["annotation_id"]]


def check(condition, message: str, data: list):
    """Graph-safe assertion whose error lists ``message`` then ``data`` (record identity)."""
    return tf.debugging.Assert(condition, [message] + data, summarize=16)


def _decode_keypoints(parsed: dict, out: dict):
    x, y = parsed[schema.HG_X], parsed[schema.HG_Y]
    vis = tf.cast(parsed[schema.KP_VISIBILITY], tf.int32)
    checks = [
        check(tf.equal(tf.size(x), tf.size(y)),
              "keypoint_hg/x and keypoint_hg/y differ in length; re-convert the record", _where(out)),
        check(tf.equal(tf.size(x), tf.size(vis)),
              "keypoint_hg/x and keypoint/visibility differ in length; re-convert the record",
              _where(out)),
    ]
    with tf.control_dependencies(checks):
        keypoints = tf.stack([x, y], axis=-1)
        return keypoints, tf.identity(vis)


def _decode_image(encoded, out: dict):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    shape = tf.shape(image)
    ok = tf.reduce_all(tf.equal(shape[:2], tf.stack([out["height"], out["width"]])))
    size_check = check(ok, "decoded image size differs from image/height, image/width; re-convert "
                           "the record", _where(out) + ["decoded (h, w, c):", shape,
                                                        "stored (h, w):", out["height"], out["width"]])
    with tf.control_dependencies([size_check]):
        return tf.identity(image)
