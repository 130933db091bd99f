"""Input reader: eval order and completeness, train batching and seeds, sharding by input
pipeline, and per-replica batches under tf.distribute."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from pipeline.input_reader import InputReader
from pipeline.parser import Parser, ParserConfig
from tests.conftest import REPO, write_shards

SMALL = ParserConfig(input_size=(64, 64))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, coco_examples):
    """3 shards of the 40 COCO persons; shard i holds examples i, i+3, ..."""
    return write_shards(coco_examples, tmp_path_factory.mktemp("records"), 3)


@pytest.fixture(scope="module")
def ids(coco_records):
    return [r.annotation_id for r in coco_records[0]]


def _ids_in_file_order(ids, num_shards=3):
    return [a for s in range(num_shards) for a in ids[s::num_shards]]


def _identity_parse(decoded, seed=None):
    out = {"annotation_id": decoded["annotation_id"]}
    if seed is not None:
        out["seed"] = seed
    return out


def test_eval_reads_every_example_once_in_order(shards, ids, coco_spec):
    pattern = os.path.join(os.path.dirname(shards[0]), "*.tfrecord")
    reader = InputReader(pattern, Parser(SMALL, coco_spec), is_training=False, global_batch_size=16)
    batches = list(reader(None))
    assert [int(b[0].shape[0]) for b in batches] == [16, 16, 8]
    got = [int(a) for _, labels in batches for a in labels["annotation_id"].numpy()]
    assert got == _ids_in_file_order(ids)
    assert batches[0][0].dtype == tf.uint8 and batches[0][1]["heatmaps"].shape[1:] == (16, 16, 17)


def test_eval_sharded_over_input_pipelines(shards, ids):
    seen = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        reader = InputReader(shards, _identity_parse, is_training=False, global_batch_size=10)
        batches = list(reader(ctx))
        assert max(int(b["annotation_id"].shape[0]) for b in batches) == 5   # per-replica batch
        part = [int(a) for b in batches for a in b["annotation_id"].numpy()]
        seen.append(part)
    assert seen[0] == ids[0::3] + ids[2::3]       # files 0 and 2, in order
    assert seen[1] == ids[1::3]
    assert sorted(seen[0] + seen[1]) == sorted(ids)


def test_train_batches_and_seeds(shards, coco_spec):
    parser = Parser(SMALL, coco_spec)

    def reader(seed):
        return InputReader(shards, parser, is_training=True, global_batch_size=8, seed=seed,
                           shuffle_buffer=16)

    def first_batches(seed):
        it = iter(reader(seed).read())
        return [next(it) for _ in range(2)]

    a, b = first_batches(5), first_batches(5)
    for (ia, la), (ib, lb) in zip(a, b):
        assert ia.shape == (8, 64, 64, 3) and la["heatmaps"].shape == (8, 16, 16, 17)
        np.testing.assert_array_equal(ia.numpy(), ib.numpy())
        np.testing.assert_array_equal(la["heatmaps"].numpy(), lb["heatmaps"].numpy())
    c = first_batches(6)
    assert not np.array_equal(a[0][0].numpy(), c[0][0].numpy())
    ds = reader(5).read()
    assert ds.element_spec[0].shape == (8, 64, 64, 3)          # drop_remainder: static batch
    assert ds.options().deterministic
    assert not reader(None).read().options().deterministic


def test_train_epoch_covers_all_records_with_distinct_seeds(shards, ids):
    """One epoch (repeat=False), 2 input pipelines, 1 file (fewer files than pipelines, so
    records are split): every record once, every example its own seed."""
    seen, seeds = [], []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(2, pipeline_id, 2)
        reader = InputReader(shards[0], _identity_parse, is_training=True, global_batch_size=2, seed=1,
                             repeat=False)
        for batch in reader(ctx):
            seen += [int(a) for a in batch["annotation_id"].numpy()]
            seeds += [tuple(s) for s in batch["seed"].numpy()]
    assert sorted(seen) == sorted(ids[0::3])       # per-replica batch 1: nothing dropped
    assert len(set(seeds)) == len(seeds)


def test_missing_files_error_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        InputReader(pattern, _identity_parse, is_training=False, global_batch_size=4)


@pytest.mark.processes
@pytest.mark.slow
def test_distribute_datasets_from_function_gives_per_replica_batches(shards, ids):
    """MirroredStrategy over 2 logical CPUs (needs a fresh process to configure devices)."""
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from pipeline.input_reader import InputReader
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        reader = InputReader({shards!r}, lambda d: {{"annotation_id": d["annotation_id"]}},
                             is_training=False, global_batch_size=6)
        seen = []
        for batch in reader.distribute(strategy):
            parts = strategy.experimental_local_results(batch["annotation_id"])
            assert len(parts) == 2
            seen += [int(a) for p in parts for a in p.numpy()]
            assert max(int(p.shape[0]) for p in parts) <= 3
        print("SEEN", sorted(seen))
    """)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("SEEN")][0]
    assert sorted(json.loads(line[5:])) == sorted(int(a) for a in ids)


# ----------------------------------------------------------------------------- records of many persons


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory, coco_image_examples):
    """3 shards of the 17 COCO images (schema 2: each record holds its image's persons)."""
    return write_shards(coco_image_examples, tmp_path_factory.mktemp("image_records"), 3)


def _image_of(coco_records):
    return {r.annotation_id: r.image_id for r in coco_records[0]}


def test_eval_expands_every_person_of_every_image_in_record_order(image_shards, coco_image_examples,
                                                                  shards, coco_spec):
    """Eval over one-record-per-image shards gives each person once, persons of a record in
    order, with exactly the labels (crop, heatmaps, matrix) of the same person read from a
    record of its own."""
    from pipeline import schema
    per_image = InputReader(image_shards, Parser(SMALL, coco_spec), is_training=False, global_batch_size=8)
    per_person = InputReader(shards, Parser(SMALL, coco_spec), is_training=False, global_batch_size=8)

    def collect(reader):
        out = {}
        for images, labels in reader(None):
            for i, a in enumerate(labels["annotation_id"].numpy()):
                out[int(a)] = (images[i].numpy(), labels["heatmaps"][i].numpy(), labels["matrix"][i].numpy())
        return out

    order = [int(a) for _, labels in per_image(None) for a in labels["annotation_id"].numpy()]

    def annotation_id(person):
        feature = tf.train.Example.FromString(person).features.feature
        return feature[schema.HG_ANNOTATION_ID].int64_list.value[0]

    expected = [annotation_id(p) for s in range(3) for e in coco_image_examples[s::3]
                for p in schema.person_examples(e)]
    assert order == expected and len(order) == 40 and len(set(order)) == 40
    a, b = collect(per_image), collect(per_person)
    assert sorted(a) == sorted(b)
    for key in a:
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)


def test_train_epoch_sees_every_person_once_and_mixes_images(image_shards, coco_records):
    reader = InputReader(image_shards, _identity_parse, is_training=True, global_batch_size=1, seed=3,
                         repeat=False, shuffle_buffer=64)
    got = [int(b["annotation_id"][0]) for b in reader(None)]
    assert sorted(got) == sorted(r.annotation_id for r in coco_records[0])
    image = _image_of(coco_records)
    adjacent_same = sum(image[x] == image[y] for x, y in zip(got, got[1:]))
    in_record_order = len(image) - len(set(image.values()))
    assert adjacent_same < in_record_order / 2      # 23 neighbours share an image in record order


def test_records_of_schema_1_still_read(tmp_path, image_shards, coco_image_examples, coco_spec):
    """Version 1 wrote one person per record: read through the same reader, same persons and
    labels as version 2; `--verify` accepts a version-1 folder as it is."""
    from pipeline import schema
    from pipeline.convert import verify_dataset
    from pipeline.records import INFO_NAME, shard_name
    v1 = [p for e in coco_image_examples for p in schema.person_examples(e)]
    assert all(tf.train.Example.FromString(p).features.feature[schema.VERSION].int64_list.value == [1]
               for p in v1)
    path = str(tmp_path / shard_name("val", 0, 1))
    with tf.io.TFRecordWriter(path) as w:
        for p in v1:
            w.write(p)
    old = InputReader([path], Parser(SMALL, coco_spec), is_training=False, global_batch_size=40)
    new = InputReader(image_shards, Parser(SMALL, coco_spec), is_training=False, global_batch_size=40)
    (old_images, old_labels), = list(old(None))
    new_by_id = {}
    for images, labels in new(None):
        for i, a in enumerate(labels["annotation_id"].numpy()):
            new_by_id[int(a)] = images[i].numpy()
    for i, a in enumerate(old_labels["annotation_id"].numpy()):
        np.testing.assert_array_equal(old_images[i].numpy(), new_by_id[int(a)])
    info = {"schema_version": 1, "keypoint_names": list(coco_spec.names), "counts": {"val": 40},
            "splits": {"val": {"count": 40, "shards": [os.path.basename(path)],
                               "shard_bytes": [os.path.getsize(path)]}}}
    with open(tmp_path / INFO_NAME, "w") as f:
        json.dump(info, f)
    assert verify_dataset(str(tmp_path)) == []


def test_one_person_decode_refuses_a_record_of_several(coco_image_examples):
    from pipeline import decoder, schema
    many = next(e for e in coco_image_examples if len(schema.person_examples(e)) > 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pipeline.decoder.persons"):
        decoder.decode(tf.constant(many))


MODEL_GARDEN_FEATURES = {   # the keys Model Garden's TfExampleDecoder parses, with its types
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/height": tf.io.FixedLenFeature((), tf.int64),
    "image/width": tf.io.FixedLenFeature((), tf.int64),
    "image/source_id": tf.io.FixedLenFeature((), tf.string),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/keypoint/x": tf.io.VarLenFeature(tf.float32),       # the OD API's keypoint keys
    "image/object/keypoint/y": tf.io.VarLenFeature(tf.float32),
    "image/object/keypoint/visibility": tf.io.VarLenFeature(tf.int64),
}


def test_object_detection_readers_get_every_person_box_and_keypoints(coco_image_examples, coco_records):
    """Parsed with the TF OD API / Model Garden keys and types: N normalized boxes and N·K
    normalized keypoints per record, equal to each person's own values."""
    records, names = coco_records
    by_id = {r.annotation_id: r for r in records}
    from pipeline import schema
    k = len(names)
    for example in coco_image_examples:
        parsed = tf.io.parse_single_example(example, MODEL_GARDEN_FEATURES)
        dense = {key: tf.sparse.to_dense(v).numpy() if isinstance(v, tf.SparseTensor) else v.numpy()
                 for key, v in parsed.items()}
        ids = tf.train.Example.FromString(example).features.feature[schema.HG_ANNOTATION_ID].int64_list.value
        n = len(ids)
        w, h = float(dense["image/width"]), float(dense["image/height"])
        assert dense["image/object/class/label"].tolist() == [1] * n
        xs = dense["image/object/keypoint/x"].reshape(n, k)
        vis = dense["image/object/keypoint/visibility"].reshape(n, k)
        for i, a in enumerate(ids):
            r = by_id[a]
            x, y, bw, bh = r.bbox
            box = [dense["image/object/bbox/xmin"][i] * w, dense["image/object/bbox/ymax"][i] * h]
            np.testing.assert_allclose(box, [x, y + bh], rtol=1e-5)
            labelled = r.keypoints[:, 2] > 0
            np.testing.assert_allclose(xs[i][labelled] * w, r.keypoints[labelled, 0], rtol=1e-5, atol=1e-3)
            assert vis[i].tolist() == r.keypoints[:, 2].astype(int).tolist()
