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
