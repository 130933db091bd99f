"""File patterns -> batches: ``InputReader(config, decode_fn, parse_fn).read(input_context)``.

Training: the shard files are listed once, shuffled, sharded by input pipeline
(``tf.distribute.InputContext``), repeated, read with ``interleave``, shuffled, then
decoded + parsed in one parallel ``map`` (each example gets its own stateless seed, folded
from the reader seed, the pipeline id and the example's running index), batched per replica
(``drop_remainder``) and prefetched; parallelism is AUTOTUNE. Order is non-deterministic
unless ``config.seed`` is set (then the same seed gives the same batches).

Eval: files in sorted order, records in file order, one example each, in order, the last
partial batch kept (every example exactly once).

``parse_fn`` is ``Parser.parse_train`` (decoded, seed) in training and ``Parser.parse_eval``
(decoded) in eval. ``distribute(strategy)`` wraps ``read`` with
``strategy.distribute_datasets_from_function``.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional, Sequence, Union

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What to read and how to batch it. ``file_pattern`` is a glob or a list of globs;
    ``global_batch_size`` is split over replicas by the input context."""

    file_pattern: Union[str, Sequence[str]]
    global_batch_size: int
    is_training: bool
    seed: Optional[int] = None
    shuffle_buffer: int = 1024
    cycle_length: int = 8
    repeat: bool = True            # training only: loop over the data forever
    prefetch: int = AUTOTUNE

    def __post_init__(self):
        if self.global_batch_size <= 0:
            raise ValueError(f"InputConfig.global_batch_size must be > 0, got {self.global_batch_size}")


def list_files(file_pattern: Union[str, Sequence[str]]) -> list[str]:
    """Sorted files matching the pattern(s); a clear error if none match."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise FileNotFoundError(
            f"no TFRecord files match {patterns}; check the path or run convert_to_tfrecord.py first")
    return files


class InputReader:
    """Reads TFRecords into batches of ``parse_fn(decode_fn(serialized)[, seed])``."""

    def __init__(self, config: InputConfig, decode_fn: Callable, parse_fn: Callable):
        self.config = config
        self.decode_fn = decode_fn
        self.parse_fn = parse_fn
        self.files = list_files(config.file_pattern)
        self._seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2 ** 31)

    def read(self, input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
        """The dataset of (image, labels) batches for one input pipeline."""
        cfg = self.config
        pipeline_id, num_pipelines, batch = 0, 1, cfg.global_batch_size
        if input_context is not None:
            pipeline_id = input_context.input_pipeline_id
            num_pipelines = input_context.num_input_pipelines
            batch = input_context.get_per_replica_batch_size(cfg.global_batch_size)
        if cfg.is_training:
            ds = self._train_records(pipeline_id, num_pipelines)
            ds = self._parse_train(ds, pipeline_id)
        else:
            ds = self._eval_records(pipeline_id, num_pipelines)
            ds = ds.map(lambda s: self.parse_fn(self.decode_fn(s)), num_parallel_calls=AUTOTUNE,
                        deterministic=True)
        ds = ds.batch(batch, drop_remainder=cfg.is_training)
        ds = ds.prefetch(cfg.prefetch)
        options = tf.data.Options()
        options.deterministic = (not cfg.is_training) or cfg.seed is not None
        return ds.with_options(options)

    def distribute(self, strategy: tf.distribute.Strategy):
        """Per-replica batches through ``strategy.distribute_datasets_from_function``."""
        return strategy.distribute_datasets_from_function(self.read)

    def _train_records(self, pipeline_id: int, num_pipelines: int) -> tf.data.Dataset:
        cfg = self.config
        deterministic = cfg.seed is not None
        files = tf.data.Dataset.from_tensor_slices(self.files)
        shard_files = len(self.files) >= num_pipelines
        if shard_files:
            files = files.shard(num_pipelines, pipeline_id)
        files = files.shuffle(len(self.files), seed=self._seed, reshuffle_each_iteration=True)
        if cfg.repeat:
            files = files.repeat()
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=cfg.cycle_length,
                              block_length=1, num_parallel_calls=AUTOTUNE,
                              deterministic=deterministic)
        if not shard_files:  # fewer files than pipelines: split records instead
            ds = ds.shard(num_pipelines, pipeline_id)
        return ds.shuffle(cfg.shuffle_buffer, seed=self._seed, reshuffle_each_iteration=True)

    def _parse_train(self, ds: tf.data.Dataset, pipeline_id: int) -> tf.data.Dataset:
        base = tf.constant([self._seed, pipeline_id], tf.int64)

        def fn(index, serialized):
            seed = tf.random.experimental.stateless_fold_in(base, index)
            return self.parse_fn(self.decode_fn(serialized), seed)

        return ds.enumerate().map(fn, num_parallel_calls=AUTOTUNE,
                                  deterministic=self.config.seed is not None)

    def _eval_records(self, pipeline_id: int, num_pipelines: int) -> tf.data.Dataset:
        files = tf.data.Dataset.from_tensor_slices(self.files)
        shard_files = len(self.files) >= num_pipelines
        if shard_files:
            files = files.shard(num_pipelines, pipeline_id)
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=1, block_length=1,
                              deterministic=True)
        if not shard_files:
            ds = ds.shard(num_pipelines, pipeline_id)
        return ds
