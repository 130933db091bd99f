"""Choosing a tf.distribute strategy and the chief/worker roles that go with it."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import tensorflow as tf


def make_strategy(tpu: Optional[str] = None, gpu_num: Optional[int] = None,
                  mixed_precision: bool = False) -> tf.distribute.Strategy:
    """TPUStrategy with --tpu; MultiWorkerMirrored when TF_CONFIG names several workers;
    Mirrored over the GPUs when more than one is visible (or gpu_num > 1); else the default.
    Also sets the process's Keras precision policy, before any model is built under the
    strategy: "mixed_float16" with mixed_precision (float16 compute, float32 variables and
    outputs), else "float32"."""
    import keras
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    if tpu is not None:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if _tf_config_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpu_num is not None and gpu_num > len(gpus) and gpu_num > 1:
        raise ValueError(f"--gpu_num {gpu_num} asks for more GPUs than are visible ({len(gpus)})")
    wanted = gpus if gpu_num is None else gpus[:gpu_num]
    if len(wanted) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in wanted])
    if len(wanted) == 1:
        return tf.distribute.OneDeviceStrategy(wanted[0].name)
    return tf.distribute.get_strategy()


def _tf_config_workers() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid json: {e}") from e
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes summaries and model files."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type in (None, "worker") and task_id == 0 and not has_chief


def writable_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """The chief writes to `directory`; other workers to a temporary folder of their own
    (TF's multi-worker guide: every worker saves, only the chief's copy is kept)."""
    if is_chief(strategy):
        return directory
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"hg-{resolver.task_type}{resolver.task_id}-")
