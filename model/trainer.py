"""The training controller (orbit's `Controller` half): one `Trainer` for every strategy.

`Trainer(cfg, strategy, spec)` builds the model, optimizer, datasets and state under the
strategy and `train()` owns the cadence: `steps_per_loop` steps per call of the step function
(`model.train_steps`), an evaluation and a checkpoint at every epoch end, checkpoints every
`checkpoint_steps`, summaries, the best models by validation PCK, `val.txt`, `final.keras`,
SIGTERM/SIGINT and preemption, and resuming the run held by the log dir (its identity and
purge live in `model.run_dir`). The run's settings are one plain-data tree, `TrainConfig`
(`TrainConfig.smoke` is the tiny variant tests use). The precision policy is set with the
strategy (`model.distribute.make_strategy`). `model.fit` is not used: it fails under
MultiWorkerMirroredStrategy with Keras 3 (see ../shared/reference/stack-facts.md).
"""
from __future__ import annotations

import dataclasses
import glob
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

from configs import KeypointSpec
from configs.files import remove_path
from model import OUTPUT_STRIDE, HourglassConfig, as_stack_list, build_hourglass
from model.card import card_for_model, fine_tune_notices, metadata_path, save_keras
from model.distribute import is_chief, is_multi_worker, writable_dir
from model.metrics import TORSO_ALPHAS, pck_threshold_px, torso_diagonals, torso_key
from model.run_dir import (  # noqa: F401  (re-exported: callers import them from here)
    IDENTITY_NAME,
    RESUMABLE_SETTINGS,
    LogDirError,
    check_log_dir,
    clear_run_outputs,
    purge_after_step,
    run_identity,
    write_run_config,
    write_run_identity,
)
from model.train_steps import (  # noqa: F401  (make_optimizer re-exported)
    EvalSums,
    current_learning_rate,
    make_eval_step,
    make_optimizer,
    make_train_loop,
)
from pipeline.codec import HeatmapCodec
from pipeline.parser import Parser, ParserConfig
from pipeline.records import read_dataset_info

PREEMPTED_EXIT_CODE = 143      # 128 + SIGTERM: stopped with a checkpoint, no final model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training after a checkpoint at `step` was saved; no final model."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum       # the shell's convention: 143 for SIGTERM


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, as one plain-data tree (validated in `validate`):
    the model (`build_hourglass`'s arguments), the parser (crop, targets, augmentation), and
    the optimizer, schedule and loop settings. `model.input_size` and `parser.input_size`
    are the same size (checked); `model.num_keypoints` is the keypoint definition's count
    (checked by the Trainer). `mixed_precision` also needs the float16 policy, which
    `model.distribute.make_strategy(mixed_precision=True)` sets."""

    tfrecords: str
    log_dir: str = "logs/000"
    model: HourglassConfig = HourglassConfig()
    parser: ParserConfig = ParserConfig()
    batch_size: int = 16
    optimizer: str = "rmsprop"
    learning_rate: float = 5e-4
    decay_type: Optional[str] = None          # None | cosine | exponential | piecewise | polynomial
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
    overwrite_log_dir: bool = False           # delete a previous run's outputs in log_dir first
    data_service: Optional[str] = None        # grpc://HOST:PORT: training input on tf.data service workers

    @classmethod
    def smoke(cls, tfrecords: str, log_dir: str, num_keypoints: int) -> "TrainConfig":
        """A tiny, fast run (big_vision's `runlocal`): one mobile stack of 128 channels at
        64x64, batch 8, Adam 1e-3, one epoch of 2 steps, one step per loop call, no summary
        images. Change any setting with `dataclasses.replace`, e.g.
        `dataclasses.replace(TrainConfig.smoke(records, logs, spec.num_keypoints), total_epoch=2)`."""
        size = (64, 64)
        return cls(tfrecords=tfrecords, log_dir=log_dir,
                   model=HourglassConfig(num_keypoints=num_keypoints, num_stacks=1,
                                         num_channels=128, mobile=True, input_size=size),
                   parser=ParserConfig(input_size=size), batch_size=8, optimizer="adam",
                   learning_rate=1e-3, total_epoch=1, steps_per_epoch=2, steps_per_loop=1,
                   num_summary_images=0)

    def validate(self) -> None:
        if tuple(self.parser.input_size) != tuple(self.model.input_size):
            raise ValueError(f"parser.input_size {tuple(self.parser.input_size)} must be the "
                             f"model's input size {tuple(self.model.input_size)}")
        if self.parser.stride != OUTPUT_STRIDE:
            raise ValueError(f"parser.stride {self.parser.stride} must be the model's output "
                             f"stride {OUTPUT_STRIDE}")
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
        if cfg.model.num_keypoints != spec.num_keypoints:
            raise ValueError(f"TrainConfig.model.num_keypoints is {cfg.model.num_keypoints}, the "
                             f"keypoint definition names {spec.num_keypoints}")
        policy = keras.mixed_precision.global_policy().name
        if cfg.mixed_precision != (policy == "mixed_float16"):
            raise ValueError(f"TrainConfig.mixed_precision is {cfg.mixed_precision} but the Keras "
                             f"policy is {policy!r}; make the strategy with model.distribute."
                             f"make_strategy(mixed_precision={cfg.mixed_precision})")
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
        self._val_ds = self._summary_images = None     # built at the first evaluation

        self.parser = Parser(cfg.parser, spec)
        self.codec = HeatmapCodec(cfg.parser.input_size, cfg.parser.stride, cfg.parser.sigma)
        self.pck_threshold = pck_threshold_px(cfg.parser.input_size, cfg.parser.stride)

        with strategy.scope():
            self.model = build_hourglass(**dataclasses.asdict(cfg.model))
            self.optimizer = make_optimizer(cfg, self.steps_per_epoch)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.best_pck = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_pck")
        # the model card: written inside (and beside) every model this run saves
        self.card = card_for_model(self.model, spec, crop_mode=cfg.parser.crop_mode,
                                   padding=cfg.parser.padding, sigma=cfg.parser.sigma)
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
            if self.chief and cfg.verbose:
                for note in fine_tune_notices(cfg.weights_path, self.card):
                    print(f"note: {note}", flush=True)
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
        self._train_loop = make_train_loop(
            self.model, self.optimizer, strategy, self.step, global_batch_size=cfg.batch_size,
            foreground_weight=cfg.foreground_weight, mixed_precision=cfg.mixed_precision,
            jit_compile=cfg.jit_compile)
        self._eval_step = make_eval_step(
            self.model, strategy, self.codec, self.pck_threshold, torso_diagonals(spec.names),
            foreground_weight=cfg.foreground_weight)

    # ---------------------------------------------------------------- data
    def _dataset_fn(self, pattern: str, training: bool):
        from pipeline.data_service import job_name_for
        from pipeline.input_reader import InputReader
        reader = InputReader(
            file_pattern=pattern, parser=self.parser, is_training=training,
            global_batch_size=self.cfg.batch_size, seed=self.cfg.seed,
            shard_by_input_pipeline=training,
            data_service=self.cfg.data_service if training else None,
            job_name=job_name_for(self.cfg.log_dir))
        return reader

    def _distributed(self, pattern: str, training: bool):
        reader = self._dataset_fn(pattern, training)
        return self.strategy.distribute_datasets_from_function(reader)

    def _val_dataset(self):
        """The distributed val dataset, built (and its maps traced) once per run; every
        evaluation iterates it afresh from its first record."""
        if self._val_ds is None:
            self._val_ds = self._distributed(self.val_pattern, training=False)
        return self._val_ds

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> Optional[dict]:
        """Validation loss and PCK (overall, per keypoint) over every val record, plus torso
        PCK ('pck_torso@0.2', 'pck_torso@0.1' and the other keys of
        ``model.metrics.torso_pck_metrics``; only 'pck_torso_unavailable' without a torso).
        The first evaluation also keeps the first ``num_summary_images`` val crops for the
        image summaries."""
        if self.val_pattern is None:
            return None
        sums = EvalSums(self.spec.num_keypoints)
        wanted = self.cfg.num_summary_images if self._summary_images is None and self.chief else 0
        kept = []
        for batch in self._val_dataset():
            sums.add(self.strategy, self._eval_step(batch))
            if wanted > sum(int(images.shape[0]) for images, _ in kept):
                kept.append(tf.nest.map_structure(   # this worker's replicas, in record order
                    lambda t: tf.concat(self.strategy.experimental_local_results(t), 0), batch))
        if kept:
            self._summary_images = tf.nest.map_structure(
                lambda *parts: tf.concat(parts, 0)[:wanted], *kept)
        return sums.result(self.spec.names)

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
        save_keras(self.model, path, self.card)
        if self.chief:
            best = sorted(glob.glob(os.path.join(self.out_dir, "ep*-val_pck*.keras")),
                          key=_pck_of_file, reverse=True)
            for old in best[self.cfg.keep_best:]:
                for stale in (old, metadata_path(old)):
                    remove_path(stale)
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
        if self._summary_images is None:
            return
        images, labels = self._summary_images
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
    def train(self, deadline: Optional[float] = None) -> dict:
        """Train to total_epoch; resumes from the latest checkpoint in the log dir. A run
        already finished (final.keras written, step >= total) does nothing. On one machine
        SIGTERM/SIGINT save a checkpoint at the current step after the running loop call and
        raise TrainingInterrupted; on several workers/TPU the PreemptionCheckpointHandler does.
        `deadline` (a ``time.time()``): past it, the run ends after the running loop call as
        if its last epoch ended there (evaluation, checkpoint, final model), with
        ``"deadline": True`` in the summary; a wall budget for benchmarks (one worker: the
        workers of a multi-worker run would stop at different steps)."""
        if deadline is not None and is_multi_worker(self.strategy):
            raise ValueError("a training deadline needs a single-worker strategy")
        cfg, spe = self.cfg, self.steps_per_epoch
        total_steps = (cfg.total_epoch - cfg.init_epoch) * spe
        start_step = int(self.step.numpy())
        final = os.path.join(cfg.log_dir, "final.keras")
        if self.resumed_from and start_step >= total_steps and os.path.isfile(final):
            return self._already_finished(start_step, final)
        handlers = self._install_stop_handlers()
        try:
            return self._train(total_steps, start_step, deadline)
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
                "deadline": False, "already_finished": True}

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

    def _train(self, total_steps: int, start_step: int, deadline: Optional[float]) -> dict:
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

        def out_of_time() -> bool:
            return deadline is not None and time.time() >= deadline

        past = False                      # the deadline, checked after each epoch's evaluation
        while int(self.step.numpy()) < total_steps and not past:
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
                if out_of_time():
                    break                 # this step ends the run's last epoch
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
            past = out_of_time()
        final = os.path.join(self.out_dir, "final.keras")
        save_keras(self.model, final, self.card)
        summary = {"final_model": final if self.chief else None, "steps": int(self.step.numpy()),
                   "weights_digest": weights_digest(self.model),
                   "epochs": cfg.total_epoch, "seconds": round(time.time() - started, 1),
                   "best_val_pck": float(self.best_pck.numpy()), "last": last,
                   "deadline": int(self.step.numpy()) < total_steps}
        if self.chief and cfg.verbose and summary["deadline"]:
            print(f"deadline: ended at step {summary['steps']} of {total_steps}", flush=True)
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
