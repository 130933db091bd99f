"""heatmap_loss / heatmap_loss_per_example on hand-computed cases."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from model import heatmap_loss, heatmap_loss_per_example


def hand_case():
    """B=2, h=w=2, K=2. Target: a single 1 at example 0, cell (0, 0), keypoint 0.

    Stack 1 predicts 0 everywhere; stack 2 predicts 0.5 everywhere. Weights [[1, 0], [0.5, 2]].
    Each per-example loss is (sum of w_k * err^2) / (h * w * K) = sum / 8:
      stack 1, ex 0: err^2 = 1 at one cell of k=0 (w=1)                -> 1 / 8     = 0.125
      stack 1, ex 1: no error                                         -> 0
      stack 2, ex 0: k=0: 0.25 * 4 cells * w 1 = 1; k=1: w 0 -> 0      -> 1 / 8     = 0.125
      stack 2, ex 1: k=0: 0.25 * 4 * 0.5 = 0.5; k=1: 0.25 * 4 * 2 = 2  -> 2.5 / 8   = 0.3125
    """
    heatmaps = np.zeros((2, 2, 2, 2), np.float32)
    heatmaps[0, 0, 0, 0] = 1.0
    weights = np.array([[1.0, 0.0], [0.5, 2.0]], np.float32)
    predictions = [np.zeros_like(heatmaps), np.full_like(heatmaps, 0.5)]
    return heatmaps, weights, predictions


def test_per_example_hand_computed():
    total, per_stack = heatmap_loss_per_example(*hand_case())
    np.testing.assert_allclose(per_stack[0].numpy(), [0.125, 0.0], rtol=1e-6)
    np.testing.assert_allclose(per_stack[1].numpy(), [0.125, 0.3125], rtol=1e-6)
    np.testing.assert_allclose(total.numpy(), [0.25, 0.3125], rtol=1e-6)


def test_batch_mean_hand_computed():
    total, per_stack = heatmap_loss(*hand_case())
    assert total.shape == () and len(per_stack) == 2
    np.testing.assert_allclose([float(x) for x in per_stack], [0.0625, 0.21875], rtol=1e-6)
    np.testing.assert_allclose(float(total), 0.28125, rtol=1e-6)


def test_distributed_reduction_equals_batch_mean():
    """Each replica's sum / global batch, added over replicas, equals the batch mean."""
    heatmaps, weights, predictions = hand_case()
    total, _ = heatmap_loss(heatmaps, weights, predictions)
    replica_losses = []
    for rows in (slice(0, 1), slice(1, 2)):
        per_example, _ = heatmap_loss_per_example(
            heatmaps[rows], weights[rows], [p[rows] for p in predictions])
        replica_losses.append(tf.nn.compute_average_loss(per_example, global_batch_size=2))
    np.testing.assert_allclose(float(tf.add_n(replica_losses)), float(total), rtol=1e-6)


def test_zero_weight_keypoint_is_ignored_whatever_the_prediction():
    heatmaps, weights, predictions = hand_case()
    wild = [p.copy() for p in predictions]
    for p in wild:
        p[0, :, :, 1] = 1e3      # example 0, keypoint 1 has weight 0
    a, _ = heatmap_loss_per_example(heatmaps, weights, predictions)
    b, _ = heatmap_loss_per_example(heatmaps, weights, wild)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_single_tensor_float16_and_tf_function():
    heatmaps, weights, predictions = hand_case()
    total, per_stack = heatmap_loss(heatmaps, weights, predictions[1])
    np.testing.assert_allclose(float(total), 0.21875, rtol=1e-6)
    assert len(per_stack) == 1

    @tf.function
    def compiled(pred_a, pred_b):
        return heatmap_loss(heatmaps, weights, [pred_a, pred_b])[0]

    half = [tf.constant(p, tf.float16) for p in predictions]
    result = compiled(*half)
    assert result.dtype == tf.float32
    np.testing.assert_allclose(float(result), 0.28125, rtol=1e-6)


def test_gradient_matches_hand_derivative():
    """d loss / d pred = 2 * w_k * (pred - target) / (B * h * w * K) for the batch mean."""
    heatmaps, weights, predictions = hand_case()
    prediction = tf.Variable(predictions[1])
    with tf.GradientTape() as tape:
        total, _ = heatmap_loss(heatmaps, weights, [prediction])
    gradient = tape.gradient(total, prediction).numpy()
    expected = 2 * weights[:, None, None, :] * (predictions[1] - heatmaps) / (2 * 2 * 2 * 2)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)


@pytest.mark.parametrize("bad", ["prediction", "weights", "empty"])
def test_shape_mismatch_raises(bad):
    heatmaps, weights, predictions = hand_case()
    if bad == "prediction":
        predictions = [np.zeros((2, 4, 4, 2), np.float32)]
    elif bad == "weights":
        weights = np.ones((2, 3), np.float32)
    else:
        predictions = []
    with pytest.raises(ValueError):
        heatmap_loss(heatmaps, weights, predictions)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(1, 5), width=st.integers(1, 5),
       keypoints=st.integers(1, 4), stacks=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_matches_numpy_formula(batch, height, width, keypoints, stacks, seed):
    rng = np.random.default_rng(seed)
    heatmaps = rng.uniform(0, 1, (batch, height, width, keypoints)).astype(np.float32)
    weights = rng.choice([0.0, 0.5, 1.0, 2.0], (batch, keypoints)).astype(np.float32)
    predictions = [rng.normal(0, 1, heatmaps.shape).astype(np.float32) for _ in range(stacks)]
    expected = [np.einsum("bhwk,bk->b", (p - heatmaps) ** 2, weights) / (height * width * keypoints)
                for p in predictions]
    total, per_stack = heatmap_loss_per_example(heatmaps, weights, predictions)
    np.testing.assert_allclose(total.numpy(), np.sum(expected, axis=0), rtol=1e-5, atol=1e-7)
    mean_total, mean_per_stack = heatmap_loss(heatmaps, weights, predictions)
    np.testing.assert_allclose(float(mean_total), np.sum(expected) / batch, rtol=1e-5, atol=1e-7)
    assert len(per_stack) == len(mean_per_stack) == stacks


def test_foreground_weight_weighs_each_pixel_by_its_target():
    """1 + f * target per pixel, exactly; f = 0 is the plain loss; f < 0 is refused."""
    rng = np.random.default_rng(3)
    heatmaps = rng.uniform(0, 1, (2, 4, 5, 3)).astype(np.float32)
    weights = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    prediction = rng.uniform(-1, 1, (2, 4, 5, 3)).astype(np.float32)
    f = 10.0
    squared = (prediction - heatmaps) ** 2 * weights[:, None, None, :]
    expected = (squared * (1 + f * heatmaps)).mean(axis=(1, 2, 3))
    total, _ = heatmap_loss_per_example(heatmaps, weights, prediction, foreground_weight=f)
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5)
    plain, _ = heatmap_loss_per_example(heatmaps, weights, prediction)
    zero, _ = heatmap_loss_per_example(heatmaps, weights, prediction, foreground_weight=0.0)
    np.testing.assert_array_equal(plain.numpy(), zero.numpy())
    with pytest.raises(ValueError, match="foreground_weight"):
        heatmap_loss_per_example(heatmaps, weights, prediction, foreground_weight=-1.0)
