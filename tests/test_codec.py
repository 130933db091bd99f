"""Heatmap codec: targets, weights, decoding precision and the flip test."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.codec import HeatmapCodec, flip_back

CODEC = HeatmapCodec((256, 192), stride=4, sigma=2.0)     # heatmaps 64 x 48


def _reference_heatmap(x: float, y: float, h: int, w: int, stride: int, sigma: float) -> np.ndarray:
    """Full 2-D Gaussian at the cell centres, written out per pixel (no separability)."""
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.exp(-((jj - x / stride) ** 2 + (ii - y / stride) ** 2) / (2 * sigma ** 2))


def test_encode_matches_the_2d_gaussian_and_marks_weights():
    kp = np.array([[100.3, 57.9], [3.0, 250.0], [-0.1, 40.0], [191.9, 255.9], [50.0, 50.0],
                   [60.0, 256.0], [70.0, 70.0]], np.float32)
    vis = np.array([2, 1, 2, 2, 0, 2, 1])
    heatmaps, weights = (t.numpy() for t in CODEC.encode(kp, vis))
    assert heatmaps.shape == (64, 48, 7) and heatmaps.dtype == np.float32
    # labelled and inside: drawn (occluded v=1 too), weight 1; a border keypoint keeps its cut Gaussian
    # outside the window (x < 0, y >= H) or unlabelled: weight 0 and an all-zero channel
    np.testing.assert_array_equal(weights, [1, 1, 0, 1, 0, 0, 1])
    for k in range(7):
        want = _reference_heatmap(*kp[k], 64, 48, 4, 2.0) * weights[k]
        np.testing.assert_allclose(heatmaps[..., k], want, atol=1e-6)
    assert heatmaps[..., 2].max() == 0.0 and heatmaps[..., 4].max() == 0.0
    # peak 1 at the keypoint itself: the cell containing (50,50)/4 = (12.5, 12.5) is exactly its centre
    hm, _ = CODEC.encode(np.array([[50.0, 50.0]]), np.array([2]))
    assert hm.numpy()[12, 12, 0] == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 191.99), st.floats(0.0, 255.99))
@example(0.0, 4.0)     # y exactly between cells 0 and 1: the tie goes to cell 0, on the ring
def test_dark_decodes_a_gaussian_to_its_centre(x, y):
    """DARK recovers any sub-pixel centre to < 0.05 heatmap px (also next to the border);
    'quarter' is within 0.25 cell (0.5 on the outer ring) and 'none' within 0.5 cell."""
    heatmaps, _ = CODEC.encode(np.array([[x, y]], np.float32), np.array([2]))
    truth = np.array([x, y]) / 4.0
    # quarter has no neighbour on the outer ring; a centre exactly on the line between the
    # first two cells ties them, and the argmax takes the first (on the ring)
    on_ring = (truth <= 1.0) | (truth >= np.array([47.0, 63.0]))
    tolerances = {"dark": 0.05, "quarter": np.where(on_ring, 0.5, 0.25) + 1e-4, "none": 0.5 + 1e-4}
    for refine, tol in tolerances.items():
        coords, conf = CODEC.decode(heatmaps, refine)
        err = np.abs(coords.numpy()[0] / 4.0 - truth)
        assert (err < tol).all(), (refine, err)
        assert conf.numpy()[0] == pytest.approx(heatmaps.numpy().max())


def test_quarter_does_not_meet_0_05_but_dark_does():
    """Away from cell centres the quarter offset is ~0.2 cell off; DARK is not."""
    kp = np.array([[4 * 20.5 + 1.6, 4 * 30.5 - 0.4]], np.float32)   # u = 20.9, v = 30.4
    heatmaps, _ = CODEC.encode(kp, np.array([2]))
    quarter = CODEC.decode(heatmaps, "quarter")[0].numpy()[0] / 4.0
    dark = CODEC.decode(heatmaps, "dark")[0].numpy()[0] / 4.0
    assert np.abs(quarter - [20.9, 30.4]).max() > 0.1
    assert np.abs(dark - [20.9, 30.4]).max() < 1e-3


def test_decode_takes_any_leading_dims_and_runs_in_tf_data(tfrun):
    rng = np.random.default_rng(0)
    kp = rng.uniform(10, 180, (2, 3, 5, 2)).astype(np.float32)
    heatmaps, _ = CODEC.encode(kp, np.full((2, 3, 5), 2))
    assert heatmaps.shape == (2, 3, 64, 48, 5)
    for refine in ("none", "quarter", "dark"):
        (coords, conf), (g_coords, g_conf) = tfrun(lambda h: CODEC.decode(h, refine), heatmaps)
        assert coords.shape == (2, 3, 5, 2) and conf.shape == (2, 3, 5)
        np.testing.assert_allclose(coords, g_coords, atol=1e-4)
        np.testing.assert_allclose(conf, g_conf)
    np.testing.assert_allclose(coords, kp, atol=0.02)
    (hm_e, w_e), (hm_g, w_g) = tfrun(CODEC.encode, kp[0, 0], np.full(5, 2))
    np.testing.assert_allclose(hm_e, hm_g, atol=1e-6)
    np.testing.assert_array_equal(w_e, w_g)


def test_empty_channel_has_zero_confidence():
    coords, conf = CODEC.decode(tf.zeros([64, 48, 2]), "dark")
    np.testing.assert_array_equal(conf.numpy(), [0.0, 0.0])
    assert np.isfinite(coords.numpy()).all()


def test_flip_back_needs_no_shift_in_our_convention():
    """Heatmaps of the mirrored crop (x -> W - x, channels swapped), flipped back with a plain
    reverse, equal the heatmaps of the crop itself; a one-cell shift would be wrong."""
    flip_indices = [1, 0, 2]
    kp = np.array([[30.3, 40.0], [150.7, 90.2], [96.0, 200.5]], np.float32)
    mirrored = kp[flip_indices].copy()
    mirrored[:, 0] = 192.0 - mirrored[:, 0]
    vis = np.array([2, 2, 2])
    hm, _ = CODEC.encode(kp, vis)
    hm_mirror, _ = CODEC.encode(mirrored, vis)
    back = CODEC.flip_back(hm_mirror, flip_indices).numpy()
    np.testing.assert_allclose(back, hm.numpy(), atol=1e-6)
    shifted = np.roll(back, 1, axis=1)
    assert np.abs(shifted - hm.numpy()).max() > 0.1
    merged = CODEC.merge_flip(hm, hm_mirror, flip_indices)
    coords, _ = CODEC.decode(merged, "dark")
    np.testing.assert_allclose(coords.numpy(), kp, atol=0.02)
    # batched flip back equals per-example
    batch = tf.stack([hm_mirror, hm_mirror])
    np.testing.assert_allclose(flip_back(batch, flip_indices).numpy()[1], back)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiple of stride"):
        HeatmapCodec((250, 256), stride=4)
    with pytest.raises(ValueError, match="sigma"):
        HeatmapCodec((256, 256), sigma=0.0)
    with pytest.raises(ValueError, match="refine"):
        CODEC.decode(tf.zeros([64, 48, 1]), "argmax")
    with pytest.raises(ValueError, match="expects"):
        CODEC.decode(tf.zeros([64, 64, 1]), "none")


def test_decode_runs_in_a_tflite_model():
    """The decoder's ops convert to TFLite and give the same coordinates there."""
    from ai_edge_litert.interpreter import Interpreter

    class Decode(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 64, 48, 3], tf.float32)])
        def __call__(self, heatmaps):
            coords, confidence = CODEC.decode(heatmaps, "dark")
            return {"coords": coords, "confidence": confidence}

    module = Decode()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    interpreter = Interpreter(model_content=converter.convert())
    kp = np.array([[[20.3, 30.1], [100.9, 7.2], [150.0, 250.4]]], np.float32)
    heatmaps, _ = CODEC.encode(kp, np.full((1, 3), 2))
    out = interpreter.get_signature_runner()(heatmaps=heatmaps.numpy())
    np.testing.assert_allclose(out["coords"], kp, atol=0.02)
    np.testing.assert_allclose(out["confidence"], CODEC.decode(heatmaps)[1].numpy(), atol=1e-6)
