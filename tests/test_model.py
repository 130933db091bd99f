"""Stacked hourglass builder: shapes, parameter counts, layer rules, save/load, gradients,
mixed precision and tf.distribute.

Full-size models are only constructed (construction does not depend on the channel count
much, execution does); execution uses narrow (num_channels=16) models.
"""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import (
    HourglassConfig,
    as_stack_list,
    build_hourglass,
    count_trainable_parameters,
    heatmap_loss,
    hourglass_config,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The original tf-keras project's TRAINABLE parameters, 256x256, 17 keypoints, 2 stacks.
ORIGINAL_TRAINABLE = {
    "standard": (dict(num_channels=256, mobile=False), 6_571_554),
    "mobile": (dict(num_channels=256, mobile=True), 2_751_010),
    "mobile_tiny": (dict(num_channels=128, mobile=True), 720_802),
}
VARIANTS = {name: kwargs for name, (kwargs, _) in ORIGINAL_TRAINABLE.items()}
SIZES = [(256, 256), (192, 192), (256, 192)]

_FULL_MODELS = {}


def full_model(variant, num_stacks=2, input_size=(256, 256)):
    """Full-size models, built once per test session (construction only)."""
    key = (variant, num_stacks, input_size)
    if key not in _FULL_MODELS:
        _FULL_MODELS[key] = build_hourglass(num_keypoints=17, num_stacks=num_stacks,
                                            input_size=input_size, **VARIANTS[variant])
    return _FULL_MODELS[key]


@pytest.fixture(scope="module", autouse=True)
def _release_full_models():
    yield
    _FULL_MODELS.clear()


def random_images(batch, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def small_models():
    """Narrow models that are cheap to run: standard and mobile, 2 stacks, non-square."""
    return {mobile: build_hourglass(num_keypoints=5, num_stacks=2, num_channels=16,
                                    mobile=mobile, input_size=(64, 96))
            for mobile in (False, True)}


@pytest.mark.parametrize("variant", sorted(ORIGINAL_TRAINABLE))
def test_trainable_parameters_match_original_within_3_percent(variant):
    model = full_model(variant)
    expected = ORIGINAL_TRAINABLE[variant][1]
    count = count_trainable_parameters(model)
    assert abs(count - expected) / expected <= 0.03, (variant, count, expected)
    # BatchNorm moving statistics are the only non-trainable weights.
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert all("moving" in w.path for w in model.non_trainable_weights)
    assert count + non_trainable == model.count_params()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("input_size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_output_shapes_every_variant_and_size(variant, input_size):
    model = full_model(variant, 2, input_size)
    height, width = input_size
    assert model.input_shape == (None, height, width, 3)
    assert isinstance(model.outputs, list) and len(model.outputs) == 2
    assert model.output_names == ["stack_1_heatmaps", "stack_2_heatmaps"]
    for output in model.outputs:
        assert tuple(output.shape) == (None, height // 4, width // 4, 17)
        assert output.dtype == "float32"
    assert hourglass_config(model) == HourglassConfig(17, 2, VARIANTS[variant]["num_channels"],
                                                      VARIANTS[variant]["mobile"], input_size)


@pytest.mark.parametrize("num_stacks", [1, 4])
@pytest.mark.parametrize("input_size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_output_shapes_one_and_four_stacks(num_stacks, input_size):
    model = full_model("mobile_tiny", num_stacks, input_size)
    assert len(model.outputs) == num_stacks
    assert model.output_names == [f"stack_{i}_heatmaps" for i in range(1, num_stacks + 1)]
    for output in model.outputs:
        assert tuple(output.shape) == (None, input_size[0] // 4, input_size[1] // 4, 17)
    assert hourglass_config(model).num_stacks == num_stacks


def test_one_stack_call_result_as_stack_list():
    """Keras unwraps a one-output model's result; as_stack_list restores the list."""
    model = build_hourglass(num_keypoints=2, num_stacks=1, num_channels=16, input_size=(32, 64))
    assert isinstance(model.outputs, list) and len(model.outputs) == 1
    result = model(random_images(1, 32, 64), training=False)
    stacks = as_stack_list(result)
    assert len(stacks) == 1 and stacks[0].shape == (1, 8, 16, 2)
    assert as_stack_list([result, result]) == [result, result]


def test_full_size_models_run_at_non_square_size():
    """The symbolic shapes hold when the real variants are executed (256x192, one image)."""
    images = random_images(1, 256, 192)
    for variant in sorted(VARIANTS):
        # an eager call: predict_on_batch would trace a tf.function per model, 3x the time
        outputs = [o.numpy() for o in full_model(variant, 2, (256, 192))(images, training=False)]
        assert [o.shape for o in outputs] == [(1, 64, 48, 17)] * 2
        assert all(np.all(np.isfinite(o)) for o in outputs)


def test_layer_rules(small_models):
    """Conv -> BN -> ReLU, bias-free convs before BN, no Lambda, no separable 1x1, gamma 0."""
    for mobile, model in small_models.items():
        types = {type(layer).__name__ for layer in model.layers}
        assert "Lambda" not in types and "SeparableConv2D" not in types
        assert type(model.layers[1]).__name__ == "Rescaling"
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "BatchNormalization":
                source = layer.input._keras_history.operation
                assert type(source).__name__ in ("Conv2D", "DepthwiseConv2D"), layer.name
                assert not source.use_bias, source.name
            elif kind == "ReLU":
                source = layer.input._keras_history.operation
                assert type(source).__name__ in ("BatchNormalization", "Add"), layer.name
            elif kind == "DepthwiseConv2D":
                assert mobile and tuple(layer.kernel_size) != (1, 1), layer.name
            elif kind == "Conv2D" and mobile:
                assert tuple(layer.kernel_size) == (1, 1), layer.name
        if not mobile:
            assert any(tuple(getattr(layer, "kernel_size", ())) == (3, 3) for layer in model.layers)
        last_bns = [layer for layer in model.layers if layer.name.endswith("_3_bn")]
        assert len(last_bns) == 3 + 14 * 2   # stem + 14 bottlenecks per stack
        assert all(not np.any(layer.gamma.numpy()) for layer in last_bns)


def test_tflite_folds_every_batch_norm():
    """After conversion (the exporter's ``keras_converter``) only the input rescale is a MUL
    and every ADD is a residual/merge Add (or the rescale offset): no BatchNorm is left as
    MUL + ADD; outputs match Keras."""
    from ai_edge_litert.interpreter import Interpreter

    from export.convert import keras_converter

    model = build_hourglass(num_keypoints=3, num_stacks=1, num_channels=16, mobile=True,
                            input_size=(64, 64))   # one stack: conversion time grows with the graph
    _randomize(model, seed=4)
    flatbuffer = keras_converter(model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    add_inputs = sum(len(layer.input) - 1 for layer in model.layers
                     if type(layer).__name__ == "Add")
    assert ops.count("MUL") == 1
    assert ops.count("ADD") == add_inputs + 1
    # each of the 3 nearest upsamplings is 2 CONCATENATION + 2 RESHAPE, no TILE / resize
    assert "TILE" not in ops and "RESIZE_NEAREST_NEIGHBOR" not in ops
    assert ops.count("CONCATENATION") == 6
    images = random_images(1, 64, 64, seed=5).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    expected = as_stack_list(model(images, training=False))[-1].numpy()
    assert np.std(expected) > 1e-3
    np.testing.assert_allclose(interpreter.get_tensor(output["index"]), expected,
                               rtol=1e-4, atol=1e-4)


def test_uint8_and_float_inputs_give_same_heatmaps(small_models):
    model = small_models[True]
    images = random_images(2, 64, 96)
    from_uint8 = model(tf.constant(images), training=False)
    from_float = model(images.astype(np.float32), training=False)
    assert len(from_uint8) == 2
    for a, b in zip(from_uint8, from_float):
        assert a.shape == (2, 16, 24, 5) and a.dtype == tf.float32
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    rescaled = model.get_layer("rescale")(np.array([0.0, 127.5, 255.0], np.float32))
    np.testing.assert_allclose(rescaled.numpy(), [-1.0, 0.0, 1.0], atol=1e-6)


def _randomize(model, seed):
    """Random values for every weight (gamma 0 would hide a wrong load)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "variance" in weight.path:
            value = rng.uniform(0.5, 1.5, weight.shape)
        else:
            value = rng.normal(0.0, 0.2, weight.shape)
        weight.assign(value.astype(np.float32))


def test_save_load_keras_safe_mode_identical_outputs(tmp_path):
    """Mobile: it has every layer type of the standard model, plus DepthwiseConv2D."""
    images = random_images(2, 64, 96, seed=1)
    model = build_hourglass(num_keypoints=5, num_stacks=2, num_channels=16, mobile=True,
                            input_size=(64, 96))
    _randomize(model, seed=2)
    expected = [o.numpy() for o in model(images, training=False)]   # eager: no predict tracing
    path = str(tmp_path / "hourglass.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(model) and type(model).__name__ == "Functional"
    assert loaded.output_names == model.output_names
    assert hourglass_config(loaded) == HourglassConfig(5, 2, 16, True, (64, 96))
    got = [o.numpy() for o in loaded(images, training=False)]
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.std(expected[-1]) > 1e-3   # the comparison is not between zeros


def test_every_stack_receives_gradients():
    model = build_hourglass(num_keypoints=4, num_stacks=3, num_channels=16, input_size=(64, 64))
    rng = np.random.default_rng(3)
    images = random_images(2, 64, 64, seed=3)
    heatmaps = rng.uniform(0, 1, (2, 16, 16, 4)).astype(np.float32)
    weights = np.ones((2, 4), np.float32)
    with tf.GradientTape(persistent=True) as tape:
        predictions = model(images, training=True)
        total, per_stack = heatmap_loss(heatmaps, weights, predictions)
    variables = model.trainable_variables
    gradients = tape.gradient(total, variables)
    assert all(g is not None for g in gradients)
    by_path = {v.path: g for v, g in zip(variables, gradients)}
    for stack in range(1, 4):
        for layer in (f"stack_{stack}_heatmaps", f"stack_{stack}_head_conv"):
            kernel = model.get_layer(layer).kernel
            assert np.abs(by_path[kernel.path].numpy()).max() > 0, layer
    # The last stack's loss reaches the first stack through the re-injected heatmaps.
    first_kernel = model.get_layer("stack_1_heatmaps").kernel
    through = tape.gradient(per_stack[-1], first_kernel)
    assert np.abs(through.numpy()).max() > 0
    del tape


def test_mixed_precision_outputs_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_hourglass(num_keypoints=3, num_stacks=2, num_channels=16, mobile=True,
                                input_size=(64, 64))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("stem_block1_1_conv").compute_dtype == "float16"
    for index in (1, 2):
        assert model.get_layer(f"stack_{index}_heatmaps").dtype_policy.name == "float32"
    assert all(output.dtype == "float32" for output in model.outputs)
    outputs = model(random_images(1, 64, 64), training=False)
    assert [o.dtype for o in outputs] == [tf.float32, tf.float32]
    assert all(np.all(np.isfinite(o.numpy())) for o in outputs)


@pytest.mark.parametrize("input_size", [(250, 256), (256, 200), (16, 16), (0, 256), (96, 100)])
def test_input_size_not_multiple_of_32_raises(input_size):
    with pytest.raises(ValueError, match="multiples of 32|positive ints"):
        build_hourglass(input_size=input_size)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_keypoints=0), "num_keypoints"),
    (dict(num_keypoints=17.0), "num_keypoints"),
    (dict(num_stacks=0), "num_stacks"),
    (dict(num_stacks=True), "num_stacks"),
    (dict(num_channels=130), "num_channels"),
    (dict(num_channels=-256), "num_channels"),
    (dict(mobile="yes"), "mobile"),
    (dict(input_size=(256,)), "input_size"),
    (dict(input_size=(256.0, 256)), "input_size"),
    (dict(input_size="256x256"), "input_size"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_hourglass(**kwargs)


def test_size_error_message_names_the_fix():
    with pytest.raises(ValueError) as error:
        build_hourglass(input_size=(250, 190))
    assert "(256, 192)" in str(error.value)


def test_hourglass_config_rejects_other_models():
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="not built by build_hourglass"):
        hourglass_config(other)


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from model import build_hourglass, heatmap_loss_per_example
    from model.train_steps import FusedAdam

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_hourglass(num_keypoints=3, num_stacks=1, num_channels=16, mobile=False,
                                input_size=(64, 64))
        optimizer = FusedAdam(0.01)
        optimizer.build(model.trainable_variables)
        checked = [0, 1, 2, 3, len(model.trainable_variables) - 1]
        twin = [keras.Variable(model.trainable_variables[i].numpy()) for i in checked]
        twin_optimizer = keras.optimizers.Adam(0.01)    # Keras's own, on copies of 5 weights
        twin_optimizer.build(twin)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    heatmaps = rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    weights = np.ones((4, 3), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, heatmaps, weights)).batch(4)
    kernel = model.get_layer("stack_1_heatmaps").kernel
    before = kernel.numpy().copy()
    start = [v.numpy() for v in model.trainable_variables]

    def replica_step(images, heatmaps, weights):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            total, _ = heatmap_loss_per_example(heatmaps, weights, predictions)
            loss = tf.nn.compute_average_loss(total, global_batch_size=4)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        twin_optimizer.apply_gradients(zip([grads[i] for i in checked], twin))
        return loss, tf.shape(images)[0]

    @tf.function
    def train_step(batch):
        loss, rows = strategy.run(replica_step, args=batch)
        return (strategy.reduce("SUM", loss, axis=None),
                strategy.experimental_local_results(rows))

    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    for _ in range(3):
        loss, rows = train_step(batch)
    copies = [v.numpy() for v in kernel.value.values]
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "rows": [int(r) for r in rows],
        "loss": float(loss),
        "mirrored": type(kernel).__name__ + "/" + type(kernel.value).__name__,
        "changed": bool(np.abs(kernel.numpy() - before).max() > 0),
        "copies_differ": float(np.abs(copies[0] - copies[1]).max()),
        "fused_vs_keras": max(float(np.abs(model.trainable_variables[i].numpy() - b.numpy()).max()
                                    / np.abs(b.numpy() - start[i]).max())
                              for i, b in zip(checked, twin)),
    }))
""")


@pytest.mark.processes
def test_builds_and_trains_under_mirrored_strategy_on_two_cpus():
    """Own process: logical CPU devices must be configured before TF starts. One stack keeps
    the per-replica graph (traced twice) small; the stack count plays no role here. The
    fused Adam updates both replicas' copies alike and as Keras's Adam does (its gradients
    applied by Keras's Adam to copies of five of the weights)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", DISTRIBUTED_SCRIPT], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["rows"] == [2, 2]
    assert np.isfinite(report["loss"]) and report["loss"] > 0
    assert report["mirrored"].endswith("/MirroredVariable")
    assert report["changed"]
    assert report["copies_differ"] == 0.0
    assert report["fused_vs_keras"] < 1e-3, report    # of the 3 steps' change


def test_nearest_upsampling_matches_repeat_and_compiles_with_xla():
    """The upsampling block equals numpy's repeat and its gradient compiles with XLA on CPU
    (--jit_compile); ResizeNearestNeighborGrad would not."""
    import keras

    from model.blocks import apply_nearest_upsample_2x
    inputs = keras.Input((3, 5, 2))
    block = keras.Model(inputs, apply_nearest_upsample_2x(inputs, name="up"))
    x = np.random.default_rng(0).random((2, 3, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(block(x).numpy(), x.repeat(2, axis=1).repeat(2, axis=2))

    @tf.function(jit_compile=True)
    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = tf.reduce_sum(block(v) ** 2)
        return tape.gradient(y, v)

    np.testing.assert_allclose(grad(tf.constant(x)).numpy(), 8.0 * x, rtol=1e-6)


def test_fused_batch_norm_training_equals_keras():
    """A BatchNorm under fuse_batch_norm_training gives Keras' training outputs, gradients (to
    the input, gamma and beta) and moving statistics; inference and the class are Keras'."""
    import types

    from model.blocks import fuse_batch_norm_training

    x = tf.random.stateless_normal((4, 8, 8, 5), seed=(1, 2)) * 3.0 + 1.0
    upstream = tf.random.stateless_normal((4, 8, 8, 5), seed=(3, 4))
    inp = keras.Input((8, 8, 5))
    model = keras.Model(inp, keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(inp))
    bn = model.layers[-1]
    bn.gamma.assign(tf.random.stateless_uniform((5,), seed=(5, 6), minval=0.5, maxval=2.0))
    bn.beta.assign(tf.random.stateless_normal((5,), seed=(7, 8)))

    def step():
        bn.moving_mean.assign(tf.zeros(5))
        bn.moving_variance.assign(tf.ones(5))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
        return [t.numpy() for t in [y, *grads, bn.moving_mean, bn.moving_variance]]

    plain = step()
    fuse_batch_norm_training(model)
    assert type(bn) is keras.layers.BatchNormalization
    fused = step()
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.abs(plain[5] - 1.0).max() > 0.1             # the statistics did move
    keras_call = types.MethodType(keras.layers.BatchNormalization.call, bn)
    np.testing.assert_array_equal(model(x, training=False).numpy(), keras_call(x).numpy())


def test_hourglass_trains_with_fused_batch_norm():
    """build_hourglass's BatchNorms use the fused kernel in training: one step's loss equals
    the Keras path's and every gradient is within 1% of it (rounding through a deep net)."""
    import types

    from model.loss import heatmap_loss

    model = build_hourglass(num_keypoints=3, num_stacks=2, num_channels=16, mobile=True,
                            input_size=(64, 64))
    _randomize(model, seed=3)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all("call" in vars(layer) for layer in bns)     # wrapped per instance
    images = random_images(4, 64, 64, seed=4)
    targets = tf.random.stateless_uniform((4, 16, 16, 3), seed=(5, 6))
    weights = tf.ones((4, 3))
    start = [v.numpy() for v in model.variables]

    def step():
        for v, value in zip(model.variables, start):
            v.assign(value)
        with tf.GradientTape() as tape:
            loss, _ = heatmap_loss(targets, weights, model(images, training=True))
        return loss.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    fused = step()
    for layer in bns:
        layer.call = types.MethodType(keras.layers.BatchNormalization.call, layer)
    plain = step()
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-5)
    for a, b in zip(fused[1], plain[1]):
        assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max() + 1e-7, np.abs(a - b).max()


def _train_variables(optimizer, steps=30, sparse=False):
    """Variables and slots after `steps` updates of `optimizer` by fixed random gradients; the
    last variable's are IndexedSlices (rows 0 and 3, as a gather's) when `sparse`."""
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (5, 2)]
    variables = [keras.Variable(rng.normal(size=s).astype(np.float32)) for s in shapes]
    optimizer.build(variables)
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]

    @tf.function
    def step(dense):
        if sparse:
            dense = dense[:-1] + [tf.IndexedSlices(tf.gather(dense[-1], [0, 3]),
                                                   tf.constant([0, 3]), tf.constant([5, 2]))]
        optimizer.apply_gradients(zip(dense, variables))

    for g in grads:
        step([tf.constant(x) for x in g])
    slots = [v for v in optimizer.variables if v.shape != ()]      # not the step counter
    return [v.numpy() for v in variables + slots]


@pytest.mark.parametrize("name", ["adam", "sgd_nesterov", "sgd_momentum"])
@pytest.mark.parametrize("sparse", [False, True])
def test_fused_optimizers_update_as_keras_does(name, sparse):
    """FusedAdam / FusedSGD give Keras's Adam / SGD results to float rounding (dense and
    sparse gradients, a learning-rate schedule), on the same slot variables."""
    from model.train_steps import FusedAdam, FusedSGD
    schedule = keras.optimizers.schedules.CosineDecay(0.05, 30)
    fused, plain = {"adam": (FusedAdam, keras.optimizers.Adam),
                    "sgd_nesterov": (FusedSGD, keras.optimizers.SGD),
                    "sgd_momentum": (FusedSGD, keras.optimizers.SGD)}[name]
    kwargs = {} if name == "adam" else {"momentum": 0.9, "nesterov": name == "sgd_nesterov"}
    got = _train_variables(fused(schedule, **kwargs), sparse=sparse)
    want = _train_variables(plain(schedule, **kwargs), sparse=sparse)
    assert len(got) == len(want) == (9 if name == "adam" else 6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)     # steps move up to 1.5
    assert np.abs(got[0] - _train_variables(fused(schedule, **kwargs), steps=0)[0]).max() > 0.1


def test_fused_adam_is_one_kernel_per_variable_and_resumes_keras_checkpoints(tmp_path):
    """The update graph holds one ResourceApplyAdam per variable and the bias corrections
    once (not two Pow per variable); a checkpoint of Keras's Adam restores into it."""
    from model.train_steps import FusedAdam
    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=(4, 4)).astype(np.float32)) for _ in range(5)]
    grads = [tf.ones((4, 4))] * 5
    plain = keras.optimizers.Adam(0.01)
    plain.build(variables)
    plain.apply_gradients(zip(grads, variables))
    path = tf.train.Checkpoint(optimizer=plain).save(str(tmp_path / "ckpt"))

    fused = FusedAdam(0.01)
    fused.build(variables)
    tf.train.Checkpoint(optimizer=fused).restore(path).assert_consumed()
    for a, b in zip(fused.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    graph = tf.function(lambda: fused.apply_gradients(zip(grads, variables))
                        ).get_concrete_function().graph
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == 5 and ops.count("Pow") == 2, sorted(set(ops))
