"""Serialized tf.train.Example (schema of ``pipeline.schema``) -> dict of tensors, per person.

An Example holds one image and its N persons. ``decode_persons(serialized)`` returns every
key below with a leading dimension N (the image fields repeated per person), so that
``persons(records)`` (a map then ``unbatch``) turns a dataset of records into one of persons
before any pixel is decoded. ``decode(serialized)`` reads a record of exactly one person (as
schema version 1 wrote) into the dict without the leading dimension:

| key | dtype, shape | meaning |
|---|---|---|
| image | uint8 [H, W, 3] | RGB, decoded once (JPEG or PNG; grey/RGBA -> RGB); only ``decode(image=True)`` |
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

``read_window(decoded, window)`` decodes just the rows and columns a crop reads: a JPEG
through libjpeg-turbo's cropped decoding (``tf.io.decode_and_crop_jpeg``: the same pixels as
a full decode, about a third less work for a typical person crop), other formats by a full
decode and a slice. So each person decodes only its own window, whatever else its image holds.

Pure TF ops: usable inside ``tf.data.Dataset.map``. A record whose image size differs from
its stored height/width, or whose per-person fields disagree in length, fails with an error
naming its filename (and the annotation ids).
"""
from __future__ import annotations

import tensorflow as tf

from pipeline import schema

# The fields the decoder reads (parsed as ``schema.FIELDS`` declares them).
KEYS = (schema.ENCODED, schema.HEIGHT, schema.WIDTH, schema.SOURCE_ID, schema.FILENAME,
        schema.HG_X, schema.HG_Y, schema.KP_VISIBILITY, schema.HG_CENTER, schema.HG_SCALE,
        schema.HG_BBOX, schema.HG_HEAD_SIZE, schema.HG_ANNOTATION_ID, schema.AREA)
FEATURES = schema.parsing_spec(KEYS)
_IMAGE = {"encoded": schema.ENCODED, "source_id": schema.SOURCE_ID, "filename": schema.FILENAME}


def decode_persons(serialized) -> dict:
    """One serialized Example (tf.string scalar) -> dict of tensors with a leading dimension
    N, one entry per person (keys of the module docstring, pixels left encoded)."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    count = tf.size(parsed[schema.HG_SCALE])
    image = {name: parsed[key] for name, key in _IMAGE.items()}
    image["height"] = tf.cast(parsed[schema.HEIGHT], tf.int32)
    image["width"] = tf.cast(parsed[schema.WIDTH], tf.int32)
    ids = parsed[schema.HG_ANNOTATION_ID]
    where = ["file:", image["filename"], "source_id:", image["source_id"], "annotation_ids:", ids]
    k = tf.size(parsed[schema.HG_X]) // tf.maximum(count, 1)
    head = parsed[schema.HG_HEAD_SIZE]
    lengths = [(schema.HG_X, k), (schema.HG_Y, k), (schema.KP_VISIBILITY, k), (schema.HG_CENTER, 2),
               (schema.HG_BBOX, 4), (schema.HG_ANNOTATION_ID, 1), (schema.AREA, 1)]
    checks = [check(count > 0, "the record holds no person (image/object/keypoint_hg/scale is empty); "
                               "re-convert it", where)]
    checks += [check(tf.equal(tf.size(parsed[key]), count * width),
                     f"{key} does not hold {'K' if width is k else width} value(s) per person "
                     f"(persons: the length of {schema.HG_SCALE}); re-convert the record", where)
               for key, width in lengths]
    checks.append(check(tf.logical_or(tf.equal(tf.size(head), 0), tf.equal(tf.size(head), count)),
                        f"{schema.HG_HEAD_SIZE} does not hold one value per person; re-convert the "
                        "record", where))
    with tf.control_dependencies(checks):
        out = {name: tf.fill([count], value) for name, value in image.items()}
        out["keypoints"] = tf.reshape(tf.stack([parsed[schema.HG_X], parsed[schema.HG_Y]], -1),
                                      [count, k, 2])
        out["visibility"] = tf.reshape(tf.cast(parsed[schema.KP_VISIBILITY], tf.int32), [count, k])
        out["center"] = tf.reshape(parsed[schema.HG_CENTER], [count, 2])
        out["scale"] = tf.identity(parsed[schema.HG_SCALE])
        out["bbox"] = tf.reshape(parsed[schema.HG_BBOX], [count, 4])
        out["head_size"] = tf.cond(tf.equal(tf.size(head), 0), lambda: tf.fill([count], -1.0),
                                   lambda: head)
        out["annotation_id"] = tf.identity(ids)
        out["area"] = tf.identity(parsed[schema.AREA])
    return out


def plain_graph(fn):
    """`fn` traced as written, for ``Dataset.map``: the input functions have no Python control
    flow on tensors, so AutoGraph (seconds of source rewriting per process) has nothing to do."""
    return tf.autograph.experimental.do_not_convert(fn)


def persons(records: tf.data.Dataset, deterministic: bool = True) -> tf.data.Dataset:
    """A dataset of serialized Examples -> a dataset of per-person dicts (pixels encoded), the
    persons of each record in order, records in order unless ``deterministic`` is False."""
    return records.map(plain_graph(decode_persons),
                       num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=deterministic).unbatch()


def decode(serialized, image: bool = True) -> dict:
    """A record of exactly one person (what schema version 1 wrote; an error otherwise) ->
    the dict of the module docstring; ``image=False`` skips decoding the pixels
    (``read_window`` decodes what a crop needs)."""
    many = decode_persons(serialized)
    one = check(tf.equal(tf.shape(many["scale"])[0], 1),
                "decode() reads a record of one person; read records of several with "
                "pipeline.decoder.persons", ["file:", many["filename"][:1]])
    with tf.control_dependencies([one]):
        out = {name: tf.identity(value[0]) for name, value in many.items()}
    out["keypoints"].set_shape([None, 2])
    if image:
        out["image"] = _decode_image(out["encoded"], out)
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
