"""The step functions of training and validation (orbit's trainer half): no files, no cadence.

- `make_optimizer(cfg, steps_per_epoch)`: the optimizer and learning-rate schedule of a
  `model.trainer.TrainConfig` (a loss-scale optimizer for float16 runs). Adam and SGD are
  Keras's, updated by TF's fused kernels (`FusedAdam`, `FusedSGD`).
- `make_train_loop(...)`: a `tf.function(iterator, num_steps)` running `num_steps` steps (a
  `tf.range` loop over `strategy.run`, orbit's `loop_fns`): the loss is summed per example
  and divided by the global batch, gradients come from an optionally XLA-compiled function,
  and after the loop the BatchNorm moving statistics are averaged across replicas. Returns
  the mean loss and the mean per-stack losses of those steps.
- `make_eval_step(...)`: a `tf.function(batch)` giving each replica's sums for one batch (the
  training loss on val, PCK counts and torso-PCK counts by `model.metrics`, the same
  functions `run.py eval` counts with); `EvalSums` adds them up and makes the result dict.

The controller (checkpoints, summaries, best models, resume) is `model.trainer.Trainer`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from model import as_stack_list
from model.loss import heatmap_loss_per_example
from model.metrics import TORSO_ALPHAS, pck_counts, ratio, torso_pck_counts, torso_pck_metrics

if TYPE_CHECKING:
    from model.trainer import TrainConfig


def make_optimizer(cfg: "TrainConfig", steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """cfg.optimizer with cfg.decay_type over (total_epoch - init_epoch) epochs, after a linear
    warm-up of cfg.warmup_epochs; wrapped in a LossScaleOptimizer when cfg.mixed_precision."""
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
        opt = FusedAdam(schedule)
    elif cfg.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(schedule)
    else:
        opt = FusedSGD(schedule, momentum=0.9, nesterov=True)
    if cfg.mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


class _FusedUpdate:
    """Keras's TF optimizer with each variable updated by one fused TF kernel instead of the
    dozen element-wise ops of Keras's `update_step` (Adam: about 35 graph nodes per variable,
    7,600 of a one-stack model's 12,704). The same formulas on the same slot variables, so
    checkpoints are interchangeable and results equal to float rounding; the train graph
    traces and optimizes in half the time and a GPU launches one kernel per variable.
    Sparse gradients fall back to Keras's own update."""

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        if not self._fusable():
            return super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
        shared = {k: tf.convert_to_tensor(v, tf.float32)    # once, not once per variable
                  for k, v in self._shared_terms(tf.cast(learning_rate, tf.float32)).items()}

        def update(var, grad):
            if isinstance(grad, tf.IndexedSlices):
                return self.update_step(grad, var, learning_rate)
            dtype = var.dtype
            return self._fused_update(var, tf.cast(grad, dtype),
                                      {k: tf.cast(v, dtype) for k, v in shared.items()})

        for grad, var in grads_and_vars:
            distribution.extended.update(var, update, args=(grad,), group=False)

    def _slot(self, slots, var):
        return slots[self._get_variable_index(var)].value.handle


@keras.saving.register_keras_serializable(package="hourglass")
class FusedAdam(_FusedUpdate, keras.optimizers.Adam):
    """`keras.optimizers.Adam` (not amsgrad) applied by `ResourceApplyAdam`."""

    def _fusable(self):
        return not self.amsgrad

    def _shared_terms(self, lr):
        step = tf.cast(self.iterations + 1, tf.float32)
        return {"lr": lr, "beta1_power": tf.pow(tf.constant(self.beta_1, tf.float32), step),
                "beta2_power": tf.pow(tf.constant(self.beta_2, tf.float32), step),
                "beta1": self.beta_1, "beta2": self.beta_2, "epsilon": self.epsilon}

    def _fused_update(self, var, grad, terms):
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=self._slot(self._momentums, var),
            v=self._slot(self._velocities, var), grad=grad, **terms)


@keras.saving.register_keras_serializable(package="hourglass")
class FusedSGD(_FusedUpdate, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with momentum (Nesterov or not) applied by
    `ResourceApplyKerasMomentum`; without momentum Keras's own update."""

    def _fusable(self):
        return self.momentum != 0

    def _shared_terms(self, lr):
        return {"lr": lr, "momentum": self.momentum}

    def _fused_update(self, var, grad, terms):
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=var.handle, accum=self._slot(self.momentums, var), grad=grad,
            use_nesterov=self.nesterov, **terms)


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


def make_train_loop(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, step: tf.Variable, *,
                    global_batch_size: int, foreground_weight: float = 0.0,
                    mixed_precision: bool = False, jit_compile: bool = False):
    """`train_loop(iterator, num_steps) -> (mean loss, mean per-stack losses [num_stacks])`
    over `num_steps` steps of distributed batches; adds 1 to `step` per step."""
    global_batch = float(global_batch_size)
    num_stacks = len(model.outputs)

    def compute(images, labels):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            per_example, per_stack = heatmap_loss_per_example(
                labels["heatmaps"], labels["weights"], predictions, foreground_weight)
            loss = tf.reduce_sum(per_example) / global_batch
            scaled = optimizer.scale_loss(loss) if mixed_precision else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        stack_losses = tf.stack([tf.reduce_sum(s) / global_batch for s in per_stack])
        return loss, stack_losses, grads

    compute = tf.function(compute, jit_compile=jit_compile, autograph=False)

    @tf.autograph.experimental.do_not_convert      # no control flow: spares its conversion
    def replica_step(batch):
        images, labels = batch
        loss, stack_losses, grads = compute(images, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, stack_losses

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
            step.assign_add(1)
        if sync:
            strategy.run(replica_sync_moving_statistics)
        n = tf.cast(num_steps, tf.float32)
        return total / n, stacks / n

    return train_loop


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy, codec,
                   pck_threshold_px: float, diagonals: Sequence[tuple[int, int]], *,
                   foreground_weight: float = 0.0):
    """`eval_step(batch)` -> per replica (pck correct [K], pck total [K], loss sum, examples,
    torso correct [len(TORSO_ALPHAS), K], torso total [K], [examples scored, without torso]);
    `EvalSums.add` adds them up."""

    def replica_eval(batch):
        images, labels = batch
        predictions = as_stack_list(model(images, training=False))
        per_example, _ = heatmap_loss_per_example(    # the training loss, on val
            labels["heatmaps"], labels["weights"], predictions, foreground_weight)
        coords, _ = codec.decode(predictions[-1], refine="dark")
        coords = tf.cast(coords, tf.float32)
        keypoints = tf.cast(labels["keypoints"], tf.float32)
        correct, total = pck_counts(coords, keypoints, labels["weights"], pck_threshold_px, xp=tnp)
        count = tf.cast(tf.shape(images)[0], tf.float32)
        # Torso PCK in crop pixels (the crop is a similarity: same ratios as original pixels),
        # over labelled joints, as model.evaluation scores it.
        t_correct, t_total, t_scored, t_without = torso_pck_counts(
            coords, keypoints, labels["visibility"] > 0, diagonals, TORSO_ALPHAS, xp=tnp)
        return (correct, total, tf.reduce_sum(per_example), count, t_correct, t_total,
                tf.stack([t_scored, t_without]))

    @tf.function(autograph=False)
    def eval_step(batch):
        return strategy.run(replica_eval, args=(batch,))

    return eval_step


class EvalSums:
    """The sums of `make_eval_step`'s outputs over every val batch and replica."""

    def __init__(self, num_keypoints: int):
        k = num_keypoints
        self.correct, self.total = np.zeros(k), np.zeros(k)
        self.t_correct, self.t_total = np.zeros((len(TORSO_ALPHAS), k)), np.zeros(k)
        self.t_examples = np.zeros(2)
        self.loss_sum = self.count = 0.0

    def add(self, strategy: tf.distribute.Strategy, outputs) -> None:
        for c, t, ls, n, tc, tt, te in zip(*(strategy.experimental_local_results(o) for o in outputs)):
            self.correct += c.numpy()
            self.total += t.numpy()
            self.loss_sum += float(ls.numpy())
            self.count += float(n.numpy())
            self.t_correct += tc.numpy()
            self.t_total += tt.numpy()
            self.t_examples += te.numpy()

    def result(self, names: Sequence[str]) -> dict:
        """'pck', 'per_keypoint', 'loss' (mean per example), 'examples', and the torso-PCK keys
        of ``model.metrics.torso_pck_metrics``."""
        pck, per = ratio(self.correct, self.total)
        result = {"pck": pck, "per_keypoint": per, "loss": self.loss_sum / max(self.count, 1.0),
                  "examples": int(self.count)}
        result.update(torso_pck_metrics(names, self.t_correct, self.t_total, *self.t_examples))
        return result
