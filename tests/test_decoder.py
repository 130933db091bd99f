"""Example decoder on real COCO (JPEG) and DeepLabCut (PNG) records built in memory."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline import decoder, schema

KEYS = {"image": (np.uint8, 3), "height": (np.int32, 0), "width": (np.int32, 0),
        "source_id": (object, 0), "filename": (object, 0), "keypoints": (np.float32, 2),
        "visibility": (np.int32, 1), "center": (np.float32, 1), "scale": (np.float32, 0),
        "bbox": (np.float32, 1), "head_size": (np.float32, 0), "annotation_id": (np.int64, 0),
        "area": (np.float32, 0), "encoded": (object, 0)}


def _check_against_record(out: dict, record, image_bytes: bytes):
    assert set(out) == set(KEYS)
    for key, (dtype, rank) in KEYS.items():
        assert np.asarray(out[key]).ndim == rank, key
        if dtype is not object:
            assert np.asarray(out[key]).dtype == dtype, key
    assert out["encoded"] == image_bytes
    assert out["image"].shape == (record.height, record.width, 3)
    np.testing.assert_array_equal(out["image"], tf.io.decode_image(image_bytes, channels=3).numpy())
    assert (out["height"], out["width"]) == (record.height, record.width)
    assert out["source_id"] == str(record.image_id).encode()
    assert out["filename"] == record.filename.encode()
    kp = np.asarray(record.keypoints)
    labelled = kp[:, 2] > 0
    np.testing.assert_allclose(out["keypoints"][labelled], kp[labelled, :2], rtol=1e-6)
    np.testing.assert_array_equal(out["keypoints"][~labelled], 0.0)
    np.testing.assert_array_equal(out["visibility"], kp[:, 2].astype(np.int32))
    np.testing.assert_allclose(out["center"], record.center, rtol=1e-6)
    np.testing.assert_allclose(out["scale"], record.scale, rtol=1e-6)
    np.testing.assert_allclose(out["bbox"], record.bbox, rtol=1e-6)
    assert out["annotation_id"] == record.annotation_id
    assert out["head_size"] == -1.0


def test_decodes_real_coco_records_eagerly_and_in_tf_data(tfrun, coco_records, coco_examples):
    records, _ = coco_records
    for i in (0, len(records) - 1):
        with open(records[i].image_path, "rb") as f:
            blob = f.read()
        eager, graph = tfrun(decoder.decode, tf.constant(coco_examples[i]))
        _check_against_record(eager, records[i], blob)
        _check_against_record(graph, records[i], blob)
        np.testing.assert_allclose(eager["area"], records[i].area, rtol=1e-6)


def test_decodes_png_frames(dlc_example):
    example, record, _ = dlc_example
    with open(record.image_path, "rb") as f:
        blob = f.read()
    out = tf.nest.map_structure(np.asarray, decoder.decode(example))
    _check_against_record(out, record, blob)
    np.testing.assert_allclose(out["area"], record.bbox[2] * record.bbox[3], rtol=1e-5)


def _edit(example: bytes, **changes) -> bytes:
    ex = tf.train.Example.FromString(example)
    for key, (kind, values) in changes.items():
        getattr(ex.features.feature[key], kind).value[:] = values
    return ex.SerializeToString()


def test_wrong_image_size_names_the_record(coco_examples, coco_records):
    records, _ = coco_records
    bad = _edit(coco_examples[0], **{schema.HEIGHT: ("int64_list", [records[0].height + 1])})
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        decoder.decode(bad)
    msg = str(err.value)
    assert records[0].filename in msg and str(records[0].annotation_id) in msg and "re-convert" in msg
    ds = tf.data.Dataset.from_tensors(bad).map(decoder.decode)
    with pytest.raises(tf.errors.InvalidArgumentError, match=records[0].filename):
        next(iter(ds))


def test_keypoint_fields_of_different_length_fail(coco_examples, coco_records):
    records, _ = coco_records
    bad = _edit(coco_examples[0], **{schema.HG_Y: ("float_list", [1.0, 2.0])})
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not hold K value") as err:
        decoder.decode(bad)
    assert records[0].filename in str(err.value)


def _windows(h: int, w: int) -> list:
    """Windows (y0, x0, y1, x1) touching every border, one pixel, odd offsets, the whole."""
    return [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, h, w), (3, 5, h // 2 + 7, w // 3 + 11),
            (h // 3, w // 2, h, w), (17, 0, 18, w), (0, 33, h, 35)]


def test_window_decode_equals_a_slice_of_the_full_decode(tfrun, coco_examples, dlc_example):
    """JPEG (cropped libjpeg decoding) and PNG (full decode, sliced): the same pixels."""
    for example in (coco_examples[0], coco_examples[7], dlc_example[0]):
        full = decoder.decode(example)["image"].numpy()
        h, w = full.shape[:2]

        def read_all(s):
            lazy = decoder.decode(s, image=False)
            assert "image" not in lazy
            return [decoder.read_window(lazy, win) for win in _windows(h, w)]

        eager, graph = tfrun(read_all, tf.constant(example))
        for (y0, x0, y1, x1), e, g in zip(_windows(h, w), eager, graph):
            np.testing.assert_array_equal(e, full[y0:y1, x0:x1])
            np.testing.assert_array_equal(g, full[y0:y1, x0:x1])


def test_window_decode_checks_the_stored_size_first(coco_examples, coco_records):
    records, _ = coco_records
    bad = _edit(coco_examples[0], **{schema.WIDTH: ("int64_list", [records[0].width + 9])})
    lazy = decoder.decode(bad, image=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="re-convert") as err:
        decoder.read_window(lazy, [0, 0, 10, records[0].width + 9])
    assert records[0].filename in str(err.value)
