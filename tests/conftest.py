"""Shared fixtures: real data paths, Examples built in memory from real COCO / DeepLabCut
images by the package's own readers and encoder (``pipeline.sources.coco.read_coco``,
``pipeline.convert.encode_records``, ``pipeline.schema.encode_example``), TFRecord shards in a
temp dir, ``tfrun`` to run an op eagerly and again inside tf.data, and (``tests.trained_model``)
the quickstart trained once per session."""
from __future__ import annotations

import csv
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest_plugins = ["tests.trained_model"]   # the session's trained quickstart model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data")
COCO_JSON = os.path.join(DATA, "coco_val_mini", "annotations", "person_keypoints_val2017_mini.json")
COCO_IMAGES = os.path.join(DATA, "coco_val_mini", "images")
DLC_DIR = os.path.join(DATA, "dlc_openfield")


@pytest.fixture(scope="session")
def coco_paths():
    """(annotations json, image folder) of coco_val_mini; skips if the shared data is absent."""
    if not os.path.isfile(COCO_JSON):
        pytest.skip(f"shared COCO data not found at {COCO_JSON}")
    return COCO_JSON, COCO_IMAGES


@pytest.fixture(scope="session")
def coco_records(coco_paths):
    """(PersonRecord list, keypoint names) of coco_val_mini as the converter's COCO reader
    gives them (non-crowd persons with >= 1 labelled keypoint, by image id)."""
    from configs import builtin_spec
    from pipeline.sources import ReaderOptions
    from pipeline.sources.coco import read_coco

    spec = builtin_spec("coco")
    source = read_coco(*coco_paths, spec, ReaderOptions())
    records = [r for split in sorted(source.records) for r in source.records[split]]
    return records, list(spec.names)


@pytest.fixture(scope="session")
def coco_image_examples(coco_records):
    """Serialized Examples (bytes) of ``coco_records`` as the converter writes them
    (``pipeline.convert.encode_records``): one per image, holding its persons."""
    from pipeline.convert import encode_records

    records, names = coco_records
    examples, skipped = encode_records(records, names)
    assert not skipped, [s.message for s in skipped]
    return examples


@pytest.fixture(scope="session")
def coco_examples(coco_records):
    """One serialized Example per person of ``coco_records``, same order: what the converter
    writes for an image holding only that person."""
    from pipeline.convert import encode_records

    records, names = coco_records
    examples = [encode_records([r], names)[0] for r in records]
    assert all(len(e) == 1 for e in examples)
    return [e[0] for e in examples]


@pytest.fixture(scope="session")
def coco_spec():
    from configs import builtin_spec

    return builtin_spec("coco")


@pytest.fixture(scope="session")
def dlc_example():
    """(serialized Example, PersonRecord, names) of one DeepLabCut PNG frame (4 keypoints,
    converted from pixel indices to our convention; the box is the keypoints' extent)."""
    from pipeline import coords
    from pipeline.schema import PersonRecord, encode_example

    csv_path = os.path.join(DLC_DIR, "CollectedData_Pranav.csv")
    if not os.path.isfile(csv_path):
        pytest.skip(f"shared DeepLabCut data not found at {csv_path}")
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    names = [rows[1][i] for i in range(1, len(rows[1]), 2)]
    row = rows[3]
    xy = coords.from_pixel_index(np.asarray(row[1:], np.float64).reshape(-1, 2))
    filename = os.path.basename(row[0])
    path = os.path.join(DLC_DIR, "images", filename)
    with open(path, "rb") as f:
        blob = f.read()
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    center, scale = coords.box_to_center_scale(x0, y0, x1 - x0, y1 - y0)
    record = PersonRecord(
        image_path=path, filename=filename, image_id=0, width=640, height=480,
        keypoints=np.concatenate([xy, np.full((len(names), 1), 2.0)], 1), center=center,
        scale=scale, bbox=(x0, y0, x1 - x0, y1 - y0), annotation_id=0, class_text="mouse")
    return encode_example([record], blob, "png", names, reencoded=False), record, names


def write_shards(examples, directory, num_shards: int, prefix: str = "data") -> list[str]:
    """Write ``examples`` round-robin into ``num_shards`` TFRecord files; returns the paths
    (sorted). Shard i holds examples i, i + num_shards, ..."""
    import tensorflow as tf

    paths = []
    for shard in range(num_shards):
        path = os.path.join(str(directory), f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for ex in examples[shard::num_shards]:
                writer.write(ex)
        paths.append(path)
    return paths


@pytest.fixture
def tfrun():
    """``tfrun(fn, *args)`` -> (eager result, tf.data result), both as numpy structures:
    the op is run eagerly and again inside ``tf.data.Dataset.map`` (graph mode)."""
    import tensorflow as tf

    def run(fn, *args):
        eager = tf.nest.map_structure(np.asarray, fn(*args))
        ds = tf.data.Dataset.from_tensors(tuple(args)).map(lambda *a: fn(*a))
        graph = tf.nest.map_structure(np.asarray, next(iter(ds)))
        return eager, graph

    return run
