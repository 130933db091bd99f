"""Serialized tf.train.Example (schema of ``pipeline.schema``) -> dict of tensors.

``decode(serialized)`` returns:

| key | dtype, shape | meaning |
|---|---|---|
| image | uint8 [H, W, 3] | RGB, decoded once (JPEG or PNG; grey/RGBA -> RGB); not with image=False |
| encoded | string [] | the encoded image bytes |
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

``decode(serialized, image=False)`` leaves the pixels encoded; ``read_window(decoded,
window)`` then decodes just the rows and columns a crop reads: a JPEG through libjpeg-turbo's
cropped decoding (``tf.io.decode_and_crop_jpeg``: the same pixels as a full decode, about
a third less work for a typical person crop), other formats by a full decode and a slice.

Pure TF ops: usable inside ``tf.data.Dataset.map``. A record whose image size differs from
its stored height/width, or whose keypoint fields disagree in length, fails with an error
naming its filename and annotation id.
"""
from __future__ import annotations

import tensorflow as tf

from pipeline import schema

# The fields the decoder reads (parsed as ``schema.FIELDS`` declares them).
KEYS = (schema.ENCODED, schema.HEIGHT, schema.WIDTH, schema.SOURCE_ID, schema.FILENAME,
        schema.HG_X, schema.HG_Y, schema.KP_VISIBILITY, schema.HG_CENTER, schema.HG_SCALE,
        schema.HG_BBOX, schema.HG_HEAD_SIZE, schema.HG_ANNOTATION_ID, schema.AREA)
FEATURES = schema.parsing_spec(KEYS)


def decode(serialized, image: bool = True) -> dict:
    """One serialized Example (tf.string scalar) -> dict of tensors (see module docstring);
    ``image=False`` skips decoding the pixels (``read_window`` decodes what a crop needs)."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    out = {
        "encoded": parsed[schema.ENCODED],
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
    if image:
        out["image"] = _decode_image(parsed[schema.ENCODED], out)
    return out


def image_size(decoded: dict) -> tf.Tensor:
    """int32 [2] (h, w) of the record's image."""
    if "image" in decoded:
        return tf.shape(decoded["image"])[:2]
    return tf.stack([decoded["height"], decoded["width"]])


def read_window(decoded: dict, window) -> tf.Tensor:
    """uint8 [y1 - y0, x1 - x0, 3]: rows y0..y1-1 and columns x0..x1-1 of the record's image,
    ``window`` = int32 [4] (y0, x0, y1, x1) inside the image (``pipeline.affine.source_window``).
    Slices ``decoded["image"]`` when decoded; otherwise decodes only the window of a JPEG."""
    window = tf.convert_to_tensor(window, tf.int32)
    begin, size = window[:2], window[2:] - window[:2]
    if "image" in decoded:
        return _slice(decoded["image"], begin, size)
    encoded = decoded["encoded"]

    def jpeg_window():
        size_check = _size_check(tf.io.extract_jpeg_shape(encoded), decoded)
        with tf.control_dependencies([size_check]):
            return tf.io.decode_and_crop_jpeg(encoded, tf.concat([begin, size], 0), channels=3)

    def other_window():
        return _slice(_decode_image(encoded, decoded), begin, size)

    part = tf.cond(tf.io.is_jpeg(encoded), jpeg_window, other_window)
    part.set_shape([None, None, 3])
    return part


def _slice(image, begin, size):
    """Rows begin[0].. and columns begin[1].. of ``image`` [H, W, C], ``size`` (h, w) of them."""
    part = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
    part.set_shape([None, None, image.shape[-1]])
    return part


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


def _size_check(shape, out: dict):
    ok = tf.reduce_all(tf.equal(shape[:2], tf.stack([out["height"], out["width"]])))
    return check(ok, "decoded image size differs from image/height, image/width; re-convert "
                     "the record", _where(out) + ["decoded (h, w, c):", shape,
                                                  "stored (h, w):", out["height"], out["width"]])


def _decode_image(encoded, out: dict):
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    with tf.control_dependencies([_size_check(tf.shape(image), out)]):
        return tf.identity(image)
