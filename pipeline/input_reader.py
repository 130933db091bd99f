"""File patterns -> batches of (image, labels).

    reader = InputReader(file_pattern, parser, is_training, global_batch_size, seed=...)
    dataset = reader(input_context)            # or reader.read(...); None = one pipeline
    per_replica = reader.distribute(strategy)  # strategy.distribute_datasets_from_function

``parser`` is a ``pipeline.parser.Parser`` (``parse_train`` or ``parse_eval`` is picked once,
from ``is_training``) or a plain function of the mode's signature: ``fn(decoded, seed)`` in
training, ``fn(decoded)`` in eval, where ``decoded`` is one person. A record holds an image
and all its persons; ``pipeline.decoder.persons`` turns records into persons before any pixel
is decoded (pixels left encoded: each person's crop decodes only its window).

Training: the shard files are listed once, sharded by input pipeline
(``tf.distribute.InputContext``; by record instead when there are fewer files than
pipelines), shuffled, repeated, read with ``interleave``, expanded into persons, shuffled
(persons of different images mix), then parsed in one parallel ``map``: each example gets its
own stateless seed folded from the reader seed, the pipeline id and the example's running
index. Batches are per replica
(``input_context.get_per_replica_batch_size``, ``drop_remainder``) and prefetched;
parallelism is AUTOTUNE. The order is non-deterministic unless ``seed`` is given (then the
same seed gives the same batches).

With ``data_service`` (``grpc://HOST:PORT``, training only) the same pipeline runs on the
tf.data service's workers (``pipeline.data_service``): one definition for every consumer (not
sharded by input pipeline: the dispatcher hands each file to one worker), the file order left
to the dispatcher, each example's seed also folded with a hash of its record (workers count
their examples independently: the person's image id and annotation id), batches streamed
back per replica.

Eval: files in sorted order, records in file order, every person exactly once, in order,
the last partial batch kept.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import tensorflow as tf

from pipeline import decoder

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: Union[str, Sequence[str]]) -> list[str]:
    """Sorted files matching the glob(s); an existing file is taken as it is (not globbed, so
    the checked lists of ``pipeline.records.split_files`` pass through); a clear error if none
    match."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    def matches(p: str) -> list[str]:
        return [p] if tf.io.gfile.exists(p) and not tf.io.gfile.isdir(p) else tf.io.gfile.glob(p)

    files = sorted({f for p in patterns for f in matches(p)})
    if not files:
        raise FileNotFoundError(
            f"no TFRecord files match {patterns}; check the path or run convert_to_tfrecord.py first")
    return files


class InputReader:
    """Reads TFRecords into batches of ``parse(person[, seed])`` over the persons of the
    records (``pipeline.decoder.persons``).

    ``shard_by_input_pipeline``: split the data between input pipelines (each example read by
    one pipeline) or let every pipeline read everything. ``repeat``: training loops forever
    (False: one epoch). ``shuffle_buffer``/``cycle_length`` tune the training reads."""

    def __init__(self, file_pattern: Union[str, Sequence[str]], parser, is_training: bool,
                 global_batch_size: int, seed: Optional[int] = None,
                 shard_by_input_pipeline: bool = True, repeat: bool = True,
                 shuffle_buffer: int = 1024, cycle_length: int = 8,
                 data_service: Optional[str] = None,
                 job_name: str = "hourglass"):
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
        self.files = list_files(file_pattern)
        self.is_training = is_training
        self.global_batch_size = int(global_batch_size)
        self.seed = seed
        self.shard_by_input_pipeline = shard_by_input_pipeline
        self.repeat = repeat
        self.shuffle_buffer = shuffle_buffer
        self.cycle_length = cycle_length
        self.data_service = data_service if is_training else None
        self.job_name = job_name
        if hasattr(parser, "parse_train"):
            self.parse_fn = parser.parse_train if is_training else parser.parse_eval
        else:
            self.parse_fn = parser
        self._seed = seed if seed is not None else random.SystemRandom().randrange(2 ** 31)

    def __call__(self, input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
        return self.read(input_context)

    def read(self, input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
        """The dataset of (image, labels) batches for one input pipeline."""
        pipeline_id, num_pipelines, batch = 0, 1, self.global_batch_size
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(self.global_batch_size)
            if self.shard_by_input_pipeline and not self.data_service:
                pipeline_id = input_context.input_pipeline_id
                num_pipelines = input_context.num_input_pipelines
        if self.is_training:
            ds = self._train_records(pipeline_id, num_pipelines)
            ds = self._parse_train(ds, pipeline_id)
        else:
            ds = self._eval_records(pipeline_id, num_pipelines)
            ds = ds.map(decoder.plain_graph(self.parse_fn), num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(batch, drop_remainder=self.is_training)
        ds = ds.prefetch(AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = not self.data_service and ((not self.is_training) or self.seed is not None)
        ds = ds.with_options(options)
        if self.data_service:
            from pipeline.data_service import distribute
            ds = distribute(ds, self.data_service, self.job_name)
        return ds

    def distribute(self, strategy: tf.distribute.Strategy):
        """Per-replica batches through ``strategy.distribute_datasets_from_function``."""
        return strategy.distribute_datasets_from_function(self.read)

    def _sharded_files(self, pipeline_id: int, num_pipelines: int):
        """(file dataset, whether records still need sharding)."""
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if num_pipelines == 1:
            return files, False
        if len(self.files) >= num_pipelines:
            return files.shard(num_pipelines, pipeline_id), False
        return files, True

    def _train_records(self, pipeline_id: int, num_pipelines: int) -> tf.data.Dataset:
        files, shard_records = self._sharded_files(pipeline_id, num_pipelines)
        if not self.data_service:   # the dispatcher orders files itself (a shuffle here repeats them)
            files = files.shuffle(len(self.files), seed=self._seed, reshuffle_each_iteration=True)
        if self.repeat:
            files = files.repeat()
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=self.cycle_length,
                              block_length=1, num_parallel_calls=AUTOTUNE,
                              deterministic=self.seed is not None)
        if shard_records:
            ds = ds.shard(num_pipelines, pipeline_id)
        ds = decoder.persons(ds, deterministic=self.seed is not None)
        return ds.shuffle(self.shuffle_buffer, seed=self._seed, reshuffle_each_iteration=True)

    def _parse_train(self, ds: tf.data.Dataset, pipeline_id: int) -> tf.data.Dataset:
        base = tf.constant([self._seed, pipeline_id], tf.int64)

        def fn(index, person):
            seed = tf.random.experimental.stateless_fold_in(base, index)
            if self.data_service:
                identity = tf.strings.join(
                    [person["source_id"], tf.strings.as_string(person["annotation_id"])], "/")
                seed = tf.random.experimental.stateless_fold_in(
                    seed, tf.strings.to_hash_bucket_fast(identity, 2 ** 62))
            return self.parse_fn(person, seed)

        return ds.enumerate().map(decoder.plain_graph(fn), num_parallel_calls=AUTOTUNE,
                                  deterministic=self.seed is not None)

    def _eval_records(self, pipeline_id: int, num_pipelines: int) -> tf.data.Dataset:
        files, shard_records = self._sharded_files(pipeline_id, num_pipelines)
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=1, block_length=1)
        if shard_records:
            ds = ds.shard(num_pipelines, pipeline_id)
        return decoder.persons(ds)
