"""One custom training loop on tf.distribute for every strategy (orbit-style).

The train step runs `steps_per_loop` steps per `tf.function` call (a `tf.range` loop over
`strategy.run`), the loss is summed per example and divided by the global batch, gradients
come from an optionally XLA-compiled function, and float16 runs use a loss-scale optimizer.
One `Trainer` owns checkpoints (resume after SIGKILL), summaries, validation PCK, the best
models by PCK and `final.keras`. `model.fit` is not used: it fails under
MultiWorkerMirroredStrategy with Keras 3 (see ../shared/reference/stack-facts.md).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from configs import KeypointSpec, atomic_write_text
from model import as_stack_list, build_hourglass
from model.distribute import is_chief, is_multi_worker, writable_dir
from model.loss import heatmap_loss_per_example
from model.metrics import (
    TORSO_ALPHAS,
    pck_counts,
    pck_threshold_px,
    ratio,
    torso_diagonals,
    torso_key,
    torso_pck_counts,
    torso_pck_metrics,
)
from model.runner import metadata_path, model_metadata, write_metadata
from pipeline.codec import HeatmapCodec
from pipeline.convert import read_dataset_info
from pipeline.parser import Parser, ParserConfig


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class LogDirError(ValueError):
    """The log dir holds another run (or outputs of unknown origin); run.py exits 2."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training after a checkpoint at `step` was saved; no final model."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum       # the shell's convention: 143 for SIGTERM


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, as plain data (validated in `validate`)."""

    tfrecords: str
    log_dir: str = "logs/000"
    num_stacks: int = 2
    num_channels: int = 256
    mobile: bool = False
    input_size: tuple[int, int] = (256, 256)
    batch_size: int = 16
    optimizer: str = "rmsprop"
    learning_rate: float = 5e-4
    decay_type: Optional[str] = None          # None | cosine | exponential | piecewise
    warmup_epochs: float = 0.0
    init_epoch: int = 0
    total_epoch: int = 100
    seed: Optional[int] = None
    steps_per_loop: int = 50
    steps_per_epoch: Optional[int] = None     # default: train records // batch
    checkpoint_steps: int = 200
    mixed_precision: bool = False
    jit_compile: bool = False
    foreground_weight: float = 0.0            # model.loss: 1 + f * target weighs each pixel
    weights_path: Optional[str] = None
    keep_best: int = 3
    num_summary_images: int = 4
    profile_steps: Optional[tuple[int, int]] = None
    verbose: bool = True
    parser: ParserConfig = ParserConfig()
    overwrite_log_dir: bool = False           # delete a previous run's outputs in log_dir first

    def validate(self) -> None:
        if self.optimizer not in ("adam", "rmsprop", "sgd"):
            raise ValueError(f"--optimizer must be adam, rmsprop or sgd, not {self.optimizer!r}")
        if self.decay_type not in (None, "cosine", "exponential", "piecewise", "polynomial"):
            raise ValueError(f"--decay_type must be cosine, exponential, piecewise or polynomial, "
                             f"not {self.decay_type!r}")
        if self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("--batch_size must be >= 1 and --learning_rate > 0")
        if not 0 <= self.init_epoch < self.total_epoch:
            raise ValueError(f"--init_epoch ({self.init_epoch}) must be >= 0 and below "
                             f"--total_epoch ({self.total_epoch})")
        if not self.foreground_weight >= 0:
            raise ValueError(f"--foreground_weight must be >= 0, not {self.foreground_weight}")
        if self.steps_per_loop < 1 or self.checkpoint_steps < 1:
            raise ValueError("--steps_per_loop and --checkpoint_steps must be >= 1")


def split_pattern(tfrecords: str, split: str) -> list[str]:
    """The shard files of `split` exactly as dataset_info.json lists them (never a glob), each
    checked against its listed size; ``pipeline.records.RecordsError`` (a ValueError naming
    the file and the repair) when the folder does not match its dataset_info.json."""
    from pipeline.records import split_files
    return split_files(tfrecords, split)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    total = max(1, (cfg.total_epoch - cfg.init_epoch) * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    lr = cfg.learning_rate
    if cfg.decay_type == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, max(1, total - warmup), alpha=0.01,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    elif cfg.decay_type == "exponential":
        schedule = _Warmup(keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=max(1, total // 10), decay_rate=0.8), lr, warmup)
    elif cfg.decay_type == "piecewise":   # the classic recipe: ×0.1 at 60% and 90%
        schedule = _Warmup(keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(total * 0.6), int(total * 0.9)], [lr, lr * 0.1, lr * 0.01]), lr, warmup)
    elif cfg.decay_type == "polynomial":
        schedule = _Warmup(keras.optimizers.schedules.PolynomialDecay(
            lr, total, end_learning_rate=lr / 100, power=1.0), lr, warmup)
    else:
        schedule = _Warmup(None, lr, warmup) if warmup else lr
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(schedule)
    elif cfg.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(schedule)
    else:
        opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    if cfg.mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


@keras.saving.register_keras_serializable(package="hourglass")
class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then `after` (or a constant)."""

    def __init__(self, after, peak, warmup_steps):
        self.after, self.peak, self.warmup_steps = after, float(peak), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        later = self.after(step - self.warmup_steps) if self.after is not None else self.peak
        if self.warmup_steps <= 0:
            return later
        warm = self.peak * (step + 1.0) / float(self.warmup_steps)
        return tf.where(step < self.warmup_steps, warm, later)

    def get_config(self):
        return {"after": keras.saving.serialize_keras_object(self.after), "peak": self.peak,
                "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


def current_learning_rate(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def load_matching_weights(model: keras.Model, path: str) -> list[str]:
    """Copy weights layer by layer (by name) from a saved model; returns the layers skipped
    because their shapes differ (e.g. heads for another number of keypoints)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--weights_path {path}: no such file")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
        return []
    source = keras.models.load_model(path, compile=False, safe_mode=True)
    by_name = {layer.name: layer for layer in source.layers}
    skipped = []
    for layer in model.layers:
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        new, old = layer.get_weights(), src.get_weights()
        if len(new) == len(old) and all(a.shape == b.shape for a, b in zip(new, old)):
            layer.set_weights(old)
        else:
            skipped.append(layer.name)
    return skipped


class Trainer:
    """Builds model, optimizer, datasets and state under a strategy, then trains."""

    def __init__(self, cfg: TrainConfig, strategy: tf.distribute.Strategy, spec: KeypointSpec):
        cfg.validate()
        self.cfg, self.strategy, self.spec = cfg, strategy, spec
        self.chief = is_chief(strategy)
        info = read_dataset_info(cfg.tfrecords)
        if list(info["keypoint_names"]) != list(spec.names):
            raise ValueError(
                f"the keypoint definition ({spec.num_keypoints} names) disagrees with "
                f"{cfg.tfrecords}/dataset_info.json ({len(info['keypoint_names'])} names: "
                f"{', '.join(info['keypoint_names'])}); pass the classes file the records were "
                f"made with, or none to use the records' own")
        self.num_train = int(info["counts"].get("train", 0))
        self.num_val = int(info["counts"].get("val", 0))
        if self.num_train < 1:
            raise ValueError(f"{cfg.tfrecords} has no train records")
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, self.num_train // cfg.batch_size)
        self.identity = run_identity(cfg, spec, info, self.steps_per_epoch)
        check_log_dir(cfg.log_dir, self.identity, overwrite=cfg.overwrite_log_dir)
        if self.chief:
            if cfg.overwrite_log_dir:
                clear_run_outputs(cfg.log_dir)
            write_run_identity(cfg.log_dir, self.identity)   # before the first checkpoint
        self.train_pattern = split_pattern(cfg.tfrecords, "train")
        self.val_pattern = split_pattern(cfg.tfrecords, "val") if self.num_val else None

        self.parser = Parser(cfg.parser, spec)
        self.codec = HeatmapCodec(cfg.parser.input_size, cfg.parser.stride, cfg.parser.sigma)
        self.pck_threshold = pck_threshold_px(cfg.parser.input_size, cfg.parser.stride)
        self.metadata = model_metadata(spec, cfg.input_size, cfg.parser.stride, cfg.parser.crop_mode,
                                       cfg.parser.padding, sigma=cfg.parser.sigma)

        if cfg.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with strategy.scope():
            self.model = build_hourglass(
                num_keypoints=spec.num_keypoints, num_stacks=cfg.num_stacks,
                num_channels=cfg.num_channels, mobile=cfg.mobile, input_size=cfg.input_size)
            self.optimizer = make_optimizer(cfg, self.steps_per_epoch)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.best_pck = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_pck")
        self.skipped_layers = []
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, step=self.step, best_pck=self.best_pck)
        self.ckpt_dir = os.path.join(cfg.log_dir, "checkpoints")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, writable_dir(self.ckpt_dir, strategy), max_to_keep=2)
        self.resumed_from = None
        self.loop_seconds: list[tuple[int, float]] = []   # (steps, wall s) of each loop call
        self.eval_seconds: list[float] = []               # wall s of each evaluation
        # --overwrite_log_dir: every process starts from step 0, whatever a slow chief left
        latest = None if cfg.overwrite_log_dir else tf.train.latest_checkpoint(self.ckpt_dir)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self.resumed_from = latest
        elif cfg.weights_path:
            self.skipped_layers = load_matching_weights(self.model, cfg.weights_path)
        self.purged: dict = {}
        if self.chief:   # outputs written after the restored step are redone: drop them first
            self.purged = purge_after_step(cfg.log_dir, int(self.step.numpy()),
                                           cfg.init_epoch + int(self.step.numpy()) // self.steps_per_epoch)
        self.preemption = self._preemption_handler()
        self._stop_signal: Optional[int] = None

        out = cfg.log_dir if self.chief else writable_dir(cfg.log_dir, strategy)
        self.out_dir = out
        if self.chief:
            self.train_writer = tf.summary.create_file_writer(os.path.join(out, "train"))
            self.val_writer = tf.summary.create_file_writer(os.path.join(out, "validation"))
        else:
            self.train_writer = self.val_writer = tf.summary.create_noop_writer()
        self._build_functions()

    # ---------------------------------------------------------------- data
    def _dataset_fn(self, pattern: str, training: bool):
        from pipeline.input_reader import InputReader
        reader = InputReader(
            file_pattern=pattern, parser=self.parser, is_training=training,
            global_batch_size=self.cfg.batch_size, seed=self.cfg.seed,
            shard_by_input_pipeline=training)
        return reader

    def _distributed(self, pattern: str, training: bool):
        reader = self._dataset_fn(pattern, training)
        return self.strategy.distribute_datasets_from_function(reader)

    # ---------------------------------------------------------------- steps
    def _build_functions(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        global_batch = float(self.cfg.batch_size)
        mixed = self.cfg.mixed_precision

        def compute(images, labels):
            with tf.GradientTape() as tape:
                predictions = model(images, training=True)
                per_example, per_stack = heatmap_loss_per_example(
                    labels["heatmaps"], labels["weights"], predictions, self.cfg.foreground_weight)
                loss = tf.reduce_sum(per_example) / global_batch
                scaled = optimizer.scale_loss(loss) if mixed else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            stack_losses = tf.stack([tf.reduce_sum(s) / global_batch for s in per_stack])
            return loss, stack_losses, grads

        compute = tf.function(compute, jit_compile=self.cfg.jit_compile)

        def replica_step(batch):
            images, labels = batch
            loss, stack_losses, grads = compute(images, labels)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss, stack_losses

        num_stacks = self.cfg.num_stacks

        moving = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

        def replica_sync_moving_statistics():
            # Keras 3 updates BatchNorm moving statistics per replica, so replicas drift
            # apart; their mean is exactly the moving average of the global-batch statistics.
            flat = tf.concat([tf.reshape(tf.cast(v.value, tf.float32), [-1]) for v in moving], 0)
            flat = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, flat)
            for v, part in zip(moving, tf.split(flat, [int(np.prod(v.shape)) for v in moving])):
                v.assign(tf.cast(tf.reshape(part, v.shape), v.dtype))

        sync = strategy.num_replicas_in_sync > 1 and bool(moving)

        @tf.function
        def train_loop(iterator, num_steps):
            total = tf.constant(0.0)
            stacks = tf.zeros([num_stacks])
            for _ in tf.range(num_steps):
                loss, stack_losses = strategy.run(replica_step, args=(next(iterator),))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                stacks += strategy.reduce(tf.distribute.ReduceOp.SUM, stack_losses, axis=None)
                self.step.assign_add(1)
            if sync:
                strategy.run(replica_sync_moving_statistics)
            n = tf.cast(num_steps, tf.float32)
            return total / n, stacks / n

        codec, threshold = self.codec, self.pck_threshold
        diagonals = torso_diagonals(self.spec.names)

        def replica_eval(batch):
            images, labels = batch
            predictions = as_stack_list(model(images, training=False))
            per_example, _ = heatmap_loss_per_example(    # the training loss, on val
                labels["heatmaps"], labels["weights"], predictions, self.cfg.foreground_weight)
            coords, _ = codec.decode(predictions[-1], refine="dark")
            correct, total = pck_counts(coords, labels["keypoints"], labels["weights"], threshold)
            count = tf.cast(tf.shape(images)[0], tf.float32)
            # Torso PCK in crop pixels (the crop is a similarity: same ratios as original pixels),
            # over labelled joints, as model.evaluation scores it.
            import tensorflow.experimental.numpy as tnp
            t_correct, t_total, t_scored, t_without = torso_pck_counts(
                tf.cast(coords, tf.float32), tf.cast(labels["keypoints"], tf.float32),
                labels["visibility"] > 0, diagonals, TORSO_ALPHAS, xp=tnp)
            return (correct, total, tf.reduce_sum(per_example), count, t_correct, t_total,
                    tf.stack([t_scored, t_without]))

        @tf.function
        def eval_step(batch):
            return strategy.run(replica_eval, args=(batch,))

        self._train_loop, self._eval_step = train_loop, eval_step

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> Optional[dict]:
        """Validation loss and PCK (overall, per keypoint) over every val record, plus torso
        PCK ('pck_torso@0.2', 'pck_torso@0.1' and the other keys of
        ``model.metrics.torso_pck_metrics``; only 'pck_torso_unavailable' without a torso)."""
        if self.val_pattern is None:
            return None
        k = self.spec.num_keypoints
        correct, total = np.zeros(k), np.zeros(k)
        t_correct, t_total, t_examples = np.zeros((len(TORSO_ALPHAS), k)), np.zeros(k), np.zeros(2)
        loss_sum = count = 0.0
        for batch in self._distributed(self.val_pattern, training=False):
            out = self._eval_step(batch)
            for c, t, ls, n, tc, tt, te in zip(
                    *(self.strategy.experimental_local_results(o) for o in out)):
                correct += c.numpy()
                total += t.numpy()
                loss_sum += float(ls.numpy())
                count += float(n.numpy())
                t_correct += tc.numpy()
                t_total += tt.numpy()
                t_examples += te.numpy()
        pck, per = ratio(correct, total)
        result = {"pck": pck, "per_keypoint": per, "loss": loss_sum / max(count, 1.0),
                  "examples": int(count)}
        result.update(torso_pck_metrics(self.spec.names, t_correct, t_total, *t_examples))
        return result

    # ---------------------------------------------------------------- checkpoints
    def _preemption_handler(self):
        if not is_multi_worker(self.strategy) and not isinstance(self.strategy, tf.distribute.TPUStrategy):
            return None

        def exit_after_save():
            print(f"preempted (SIGTERM): checkpoint saved in {self.ckpt_dir}; rerun the same "
                  f"command to resume; no final model was written", flush=True)
            sys.exit(PREEMPTED_EXIT_CODE)

        return tf.distribute.experimental.PreemptionCheckpointHandler(
            self.strategy.cluster_resolver, self.manager,
            termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=exit_after_save))

    def _save_checkpoint(self):
        self.manager.save(checkpoint_number=int(self.step.numpy()))

    def _save_best(self, epoch: int, loss: float, pck: float) -> Optional[str]:
        if not pck > float(self.best_pck.numpy()):
            return None
        self.best_pck.assign(pck)
        name = f"ep{epoch:03d}-loss{loss:.4f}-val_pck{pck:.4f}.keras"
        path = os.path.join(self.out_dir, name)
        save_model_atomic(self.model, path, self.metadata)
        if self.chief:
            best = sorted(glob.glob(os.path.join(self.out_dir, "ep*-val_pck*.keras")),
                          key=_pck_of_file, reverse=True)
            for old in best[self.cfg.keep_best:]:
                for stale in (old, metadata_path(old)):
                    if os.path.exists(stale):
                        os.remove(stale)
        return path

    # ---------------------------------------------------------------- summaries
    def _write_train_summaries(self, loss, stack_losses, examples_per_s):
        step = int(self.step.numpy())
        with self.train_writer.as_default(step=step):
            tf.summary.scalar("loss/total", loss)
            for i, s in enumerate(stack_losses):
                tf.summary.scalar(f"loss/stack_{i + 1}", s)
            tf.summary.scalar("learning_rate", current_learning_rate(self.optimizer))
            tf.summary.scalar("examples_per_second", examples_per_s)

    def _write_val_summaries(self, result: dict):
        step = int(self.step.numpy())
        with self.val_writer.as_default(step=step):
            tf.summary.scalar("pck", result["pck"])
            tf.summary.scalar("loss/total", result["loss"])
            for name, v in zip(self.spec.names, result["per_keypoint"]):
                if not math.isnan(v):
                    tf.summary.scalar(f"pck_per_keypoint/{name}", v)
            for alpha in TORSO_ALPHAS:
                if result.get(torso_key(alpha)) is not None:
                    tf.summary.scalar(torso_key(alpha), result[torso_key(alpha)])
            if self.cfg.num_summary_images and self.chief:
                self._write_image_summaries()

    def _write_image_summaries(self):
        from model.draw import draw_skeleton, heatmap_overlay
        from pipeline.input_reader import InputReader
        reader = InputReader(file_pattern=self.val_pattern, parser=self.parser, is_training=False,
                             global_batch_size=self.cfg.num_summary_images, seed=self.cfg.seed)
        images, labels = next(iter(reader(None)))
        predictions = as_stack_list(self.model(images, training=False))
        coords, conf = self.codec.decode(predictions[-1], refine="dark")
        drawn, maps = [], []
        for i in range(images.shape[0]):
            img = images[i].numpy()
            gt = draw_skeleton(img, labels["keypoints"][i].numpy(),
                               labels["weights"][i].numpy() > 0, self.spec, color=(0, 255, 0))
            drawn.append(draw_skeleton(gt, coords[i].numpy(), np.ones(self.spec.num_keypoints, bool),
                                       self.spec))
            maps.append(heatmap_overlay(img, predictions[-1][i].numpy()))
        tf.summary.image("validation/skeletons_gt_green_pred_limb_colours", np.stack(drawn),
                         max_outputs=len(drawn))
        tf.summary.image("validation/predicted_heatmaps", np.stack(maps), max_outputs=len(maps))

    # ---------------------------------------------------------------- loop
    def train(self) -> dict:
        """Train to total_epoch; resumes from the latest checkpoint in the log dir. A run
        already finished (final.keras written, step >= total) does nothing. On one machine
        SIGTERM/SIGINT save a checkpoint at the current step after the running loop call and
        raise TrainingInterrupted; on several workers/TPU the PreemptionCheckpointHandler does."""
        cfg, spe = self.cfg, self.steps_per_epoch
        total_steps = (cfg.total_epoch - cfg.init_epoch) * spe
        start_step = int(self.step.numpy())
        final = os.path.join(cfg.log_dir, "final.keras")
        if self.resumed_from and start_step >= total_steps and os.path.isfile(final):
            return self._already_finished(start_step, final)
        handlers = self._install_stop_handlers()
        try:
            return self._train(total_steps, start_step)
        finally:
            for signum, previous in handlers.items():
                signal.signal(signum, previous)

    def _already_finished(self, step: int, final: str) -> dict:
        if self.chief:
            print(f"{self.cfg.log_dir}: already finished at step {step} (epoch "
                  f"{self.cfg.init_epoch + step // self.steps_per_epoch}); final model at {final}; "
                  f"nothing to do (a larger --total_epoch continues this run; a new --log_dir or "
                  f"--overwrite_log_dir trains a new one)", flush=True)
        return {"final_model": final if self.chief else None, "steps": step,
                "weights_digest": weights_digest(self.model), "epochs": self.cfg.total_epoch,
                "seconds": 0.0, "best_val_pck": float(self.best_pck.numpy()), "last": None,
                "already_finished": True}

    def _install_stop_handlers(self) -> dict:
        """SIGTERM/SIGINT set a flag the loop reads between loop calls; a second signal kills."""
        if self.preemption is not None or threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def on_signal(signum, frame):
            if self._stop_signal is not None:      # asked twice: stop now, no checkpoint
                for s, h in previous.items():
                    signal.signal(s, h)
                signal.raise_signal(signum)
                return
            self._stop_signal = signum
            if self.chief:
                print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after the "
                      f"current loop call", flush=True)

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
        return previous

    def _stop(self, saved: bool):
        """Checkpoint (unless just saved), flush the summaries, raise TrainingInterrupted."""
        if not saved:
            self._save_checkpoint()
        self.train_writer.flush()
        self.val_writer.flush()
        step = int(self.step.numpy())
        name = signal.Signals(self._stop_signal).name
        raise TrainingInterrupted(
            f"{name}: stopped at step {step} (epoch {self.cfg.init_epoch + step // self.steps_per_epoch}"
            f" done, {step % self.steps_per_epoch} step(s) into the next); checkpoint "
            f"{self.manager.latest_checkpoint}; no final model was written; rerun the same "
            f"command to resume", self._stop_signal, step)

    def _train(self, total_steps: int, start_step: int) -> dict:
        cfg, spe = self.cfg, self.steps_per_epoch
        if self.chief and cfg.verbose:
            where = f"resumed from {self.resumed_from} at step {start_step}" if self.resumed_from \
                else "from scratch" if not cfg.weights_path else f"from {cfg.weights_path}"
            print(f"training {self.model.name}: {self.strategy.num_replicas_in_sync} replica(s), "
                  f"global batch {cfg.batch_size}, {spe} steps/epoch, epochs "
                  f"{cfg.init_epoch + 1}..{cfg.total_epoch}, {where}", flush=True)
            if self.skipped_layers:
                print(f"--weights_path: {len(self.skipped_layers)} layer(s) with other shapes "
                      f"left as initialized: {', '.join(self.skipped_layers)}", flush=True)
        iterator = iter(self._distributed(self.train_pattern, training=True))
        history = []
        val_log = os.path.join(self.out_dir, "val.txt")
        started = time.time()
        last = None
        while int(self.step.numpy()) < total_steps:
            step = int(self.step.numpy())
            epoch = cfg.init_epoch + step // spe + 1
            bar = keras.utils.Progbar(spe, verbose=1 if (self.chief and cfg.verbose) else 0,
                                      stateful_metrics=["loss", "examples/s"])
            bar.update(step % spe)
            while True:
                step = int(self.step.numpy())
                left_in_epoch = spe - step % spe
                n = min(cfg.steps_per_loop, left_in_epoch,
                        cfg.checkpoint_steps - step % cfg.checkpoint_steps)
                self._maybe_profile(step, n)
                t0 = time.time()
                loss, stacks = self._train_loop(iterator, tf.constant(n))
                loss = float(loss.numpy())
                dt = time.time() - t0
                self.loop_seconds.append((n, dt))
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {loss} at step {step + n} (epoch {epoch}); lower "
                        f"--learning_rate or check the records; the last good checkpoint is in "
                        f"{self.ckpt_dir}")
                rate = n * cfg.batch_size / max(dt, 1e-9)
                self._write_train_summaries(loss, stacks.numpy(), rate)
                step = int(self.step.numpy())
                bar.update(spe if step % spe == 0 else step % spe,
                           values=[("loss", loss), ("examples/s", rate)])
                if self.preemption is not None:
                    self.preemption.save_checkpoint_if_preempted(checkpoint_number=step)
                if step % spe == 0:
                    break                 # the epoch's checkpoint follows its evaluation
                saved = step % cfg.checkpoint_steps == 0
                if saved:
                    self._save_checkpoint()
                if self._stop_signal is not None:
                    self._stop(saved)
            last = {"epoch": epoch, "loss": loss}
            t0 = time.time()
            result = self.evaluate()
            if result is not None:
                self.eval_seconds.append(time.time() - t0)
            if result is not None:
                last.update(val_pck=result["pck"], val_loss=result["loss"])
                self._write_val_summaries(result)
                best = self._save_best(epoch, result["loss"], result["pck"])
                if self.chief:
                    _append_line(val_log, f"Epoch {epoch}:{result['pck']:.6f}")
                    if cfg.verbose:
                        torso = result.get(torso_key(0.2))
                        print(f"epoch {epoch}: loss {loss:.5f} val_loss {result['loss']:.5f} "
                              f"val_pck {result['pck']:.4f}"
                              + (f" val_{torso_key(0.2)} {torso:.4f}" if torso is not None else "")
                              + (f" -> {os.path.basename(best)}" if best else ""), flush=True)
            self._save_checkpoint()       # after evaluation: best_pck is part of the state
            history.append(last)
            if self._stop_signal is not None and int(self.step.numpy()) < total_steps:
                self._stop(saved=True)
        final = os.path.join(self.out_dir, "final.keras")
        save_model_atomic(self.model, final, self.metadata)
        summary = {"final_model": final if self.chief else None, "steps": int(self.step.numpy()),
                   "weights_digest": weights_digest(self.model),
                   "epochs": cfg.total_epoch, "seconds": round(time.time() - started, 1),
                   "best_val_pck": float(self.best_pck.numpy()), "last": last}
        if self.chief and cfg.verbose:
            print(f"done: {summary['steps']} steps in {summary['seconds']} s, best val PCK "
                  f"{summary['best_val_pck']:.4f}, final model {final}", flush=True)
        if cfg.verbose:
            print(f"weights_digest: {summary['weights_digest']}", flush=True)
        if not self.chief:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        return summary

    def _maybe_profile(self, step: int, n: int):
        if not self.cfg.profile_steps or not self.chief:
            return
        start, stop = self.cfg.profile_steps
        if step <= start < step + n or (step == start):
            tf.profiler.experimental.start(os.path.join(self.out_dir, "profile"))
        if step <= stop < step + n:
            tf.profiler.experimental.stop()


def save_model_atomic(model: keras.Model, path: str, metadata: Optional[dict] = None) -> None:
    """model.save to a temporary name, then rename: no half-written .keras file. The
    metadata json (keypoints, input size, crop) is written beside it first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if metadata is not None:
        write_metadata(path, metadata)
    tmp = f"{path[:-len('.keras')]}.tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)


def weights_digest(model: keras.Model) -> str:
    """sha256 over every weight's bytes: equal digests mean bit-identical models."""
    import hashlib
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()[:16]


def _append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _pck_of_file(path: str) -> float:
    m = re.search(r"val_pck([0-9.]+)\.keras$", path)
    return float(m.group(1).rstrip(".")) if m else -1.0


def write_run_config(log_dir: str, cfg: TrainConfig, spec: KeypointSpec) -> None:
    """The run's settings beside its outputs (plain json)."""
    os.makedirs(log_dir, exist_ok=True)
    data = dataclasses.asdict(cfg)
    data["keypoints"] = spec.to_dict()
    atomic_write_text(os.path.join(log_dir, "run_config.json"), json.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------ run identity and resume
IDENTITY_NAME = "run_identity.json"
PREEMPTED_EXIT_CODE = 143      # 128 + SIGTERM: stopped with a checkpoint, no final model
# Settings that may differ when a run resumes: how long it runs (total_epoch), how it reports,
# how often it checkpoints, where the records lie (their content is hashed instead),
# compilation and --rotated_sampler. Everything else in TrainConfig is the run's identity.
RESUMABLE_SETTINGS = ("tfrecords", "log_dir", "total_epoch", "steps_per_loop", "checkpoint_steps",
                      "jit_compile", "keep_best", "num_summary_images", "profile_steps",
                      "verbose", "overwrite_log_dir")


def run_identity(cfg: TrainConfig, spec: KeypointSpec, info: dict, steps_per_epoch: int) -> dict:
    """What makes two launches the same run: the records' dataset_info.json (sha256 of its
    content), the keypoint definition, model, parser and optimizer settings, the resolved
    steps per epoch. Not RESUMABLE_SETTINGS."""
    import hashlib
    data = dataclasses.asdict(cfg)
    for name in RESUMABLE_SETTINGS:
        data.pop(name, None)
    data["parser"].pop("rotated_sampler", None)   # how rotated crops are warped, not what
    data["steps_per_epoch"] = int(steps_per_epoch)
    data["keypoints"] = spec.to_dict()
    data["records_sha256"] = hashlib.sha256(
        json.dumps(_records_content(info), sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return {"version": 1, **json.loads(json.dumps(data, sort_keys=True, default=str))}


def _records_content(info: dict) -> dict:
    """What identifies the records' content: per split its shard names and sha256 when the
    converter recorded them (so a moved or re-converted identical set is the same), else the
    whole dataset_info.json."""
    splits = info.get("splits") or {}
    if splits and all(isinstance(v, dict) and v.get("shard_sha256") for v in splits.values()):
        return {"keypoint_names": info["keypoint_names"], "counts": info["counts"],
                "splits": {k: {"shards": v.get("shards"), "shard_sha256": v["shard_sha256"]}
                           for k, v in splits.items()}}
    return info


def _identity_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            if key == "records_sha256":
                out.append(f"records (dataset_info.json content, sha256 {str(a)[:12]} -> {str(b)[:12]})")
            elif key == "keypoints":
                out.append("keypoint definition")
            else:
                out.append(f"{prefix}{key} {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _has_run_outputs(log_dir: str) -> list[str]:
    """The outputs of a training run found in log_dir (names relative to it)."""
    found = [name for name in ("checkpoints/checkpoint", "val.txt", "final.keras", "train",
                               "validation") if os.path.exists(os.path.join(log_dir, name))]
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(log_dir, "ep*-val_pck*.keras")))
    return found


def check_log_dir(log_dir: str, identity: dict, overwrite: bool = False) -> None:
    """Pass when log_dir holds no run outputs (an identity alone, from a launch that failed
    before training, does not count) or holds this same run (resume); LogDirError naming the
    differences and the fix otherwise. overwrite: always pass."""
    outputs = _has_run_outputs(log_dir)
    if overwrite or not outputs:
        return
    path = os.path.join(log_dir, IDENTITY_NAME)
    fix = (f"use a new --log_dir, or add --overwrite_log_dir to delete that run's outputs in "
           f"{log_dir} and start over")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise LogDirError(f"{path} is unreadable ({e}); {fix}") from e
        if old != identity:
            diff = _identity_differences(old, identity)
            raise LogDirError(
                f"--log_dir {log_dir} holds another run: it differs in {'; '.join(diff)}. Resuming "
                f"it would continue that run's checkpoints with other data or settings; {fix} "
                f"(a resumed run may change only --total_epoch, --steps_per_loop, "
                f"--checkpoint_steps, --jit_compile, --rotated_sampler, --profile_steps, --quiet "
                f"and where the same records lie)")
        return
    raise LogDirError(f"--log_dir {log_dir} holds outputs of a run with no {IDENTITY_NAME} "
                      f"({', '.join(outputs[:4])}), so it cannot be checked to be this run; {fix}")


def write_run_identity(log_dir: str, identity: dict) -> None:
    os.makedirs(log_dir, exist_ok=True)
    atomic_write_text(os.path.join(log_dir, IDENTITY_NAME), json.dumps(identity, indent=2) + "\n")


def clear_run_outputs(log_dir: str) -> list[str]:
    """--overwrite_log_dir: delete what a training run writes into log_dir (checkpoints,
    summaries, val.txt, best and final models with their json, run_config/identity);
    other files are left alone. Returns the names removed."""
    removed = []
    for name in ("checkpoints", "train", "validation", "profile"):
        if os.path.isdir(os.path.join(log_dir, name)):
            shutil.rmtree(os.path.join(log_dir, name))
            removed.append(name)
    models = glob.glob(os.path.join(log_dir, "ep*-val_pck*.keras")) + [os.path.join(log_dir, "final.keras")]
    files = ["val.txt", "run_config.json", IDENTITY_NAME] + [os.path.basename(p) for p in models] \
        + [os.path.basename(metadata_path(p)) for p in models]
    for name in files:
        if os.path.isfile(os.path.join(log_dir, name)):
            os.remove(os.path.join(log_dir, name))
            removed.append(name)
    return removed


def purge_after_step(log_dir: str, step: int, epochs_done: int) -> dict:
    """Before a run continues from `step` (the restored checkpoint; 0 when none): drop what a
    killed run wrote after it, which would otherwise appear twice: val.txt lines of epochs
    > epochs_done, best models of those epochs, TensorBoard events with a step > `step`
    (event files rewritten atomically). Returns counts of what was dropped."""
    dropped = {"val_lines": 0, "best_models": 0, "events": 0}
    val = os.path.join(log_dir, "val.txt")
    if os.path.isfile(val):
        with open(val, encoding="utf-8") as f:
            lines = f.read().splitlines()
        keep = [ln for ln in lines
                if not ((m := re.match(r"Epoch (\d+):", ln)) and int(m.group(1)) > epochs_done)]
        if len(keep) != len(lines):
            atomic_write_text(val, "".join(ln + "\n" for ln in keep))
            dropped["val_lines"] = len(lines) - len(keep)
    for path in glob.glob(os.path.join(log_dir, "ep*-val_pck*.keras")):
        m = re.match(r"ep(\d+)-", os.path.basename(path))
        if m and int(m.group(1)) > epochs_done:
            for stale in (path, metadata_path(path)):
                if os.path.exists(stale):
                    os.remove(stale)
            dropped["best_models"] += 1
    for sub in ("train", "validation"):
        for path in sorted(glob.glob(os.path.join(log_dir, sub, "*tfevents*"))):
            dropped["events"] += _truncate_event_file(path, step)
    return dropped


def _truncate_event_file(path: str, step: int) -> int:
    """Rewrite an event file without its events of step > `step` (and without a torn last
    record); the file is replaced atomically, untouched when nothing is dropped."""
    tmp = os.path.join(os.path.dirname(path), f".rewrite-{os.getpid()}")   # no 'tfevents': unseen
    dropped, damaged = 0, False
    with tf.io.TFRecordWriter(tmp) as writer:
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                if event.step > step:
                    dropped += 1
                else:
                    writer.write(event.SerializeToString())
        except tf.errors.DataLossError:
            damaged = True
    if dropped or damaged:
        os.replace(tmp, path)
    else:
        os.remove(tmp)
    return dropped
