"""Crop matrices, their inverse, the image warp and its pixel convention."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import affine, coords

SETTINGS = settings(max_examples=40, deadline=None)

centers = st.tuples(st.floats(-500, 2500), st.floats(-500, 2500))
scales = st.floats(0.1, 12.0)
angles = st.floats(-180.0, 180.0)
shifts = st.tuples(st.floats(-40, 40), st.floats(-40, 40))
input_sizes = st.sampled_from([(256, 256), (256, 192), (192, 256), (128, 96)])


def _points(seed: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-200, 2500, (n, 2))


def test_crop_window_corners_map_to_crop_corners():
    """The padded box widened to the aspect ratio fills the crop exactly."""
    for input_size in [(256, 256), (256, 192), (192, 256)]:
        center, scale, padding = (300.0, 200.0), 1.3, 1.25
        cw, ch = coords.crop_size(scale, padding, input_size[1] / input_size[0])
        m = affine.crop_matrix(center, scale, padding, input_size).numpy()
        corners = np.array([[center[0] - cw / 2, center[1] - ch / 2],
                            [center[0] + cw / 2, center[1] + ch / 2], list(center)])
        got = affine.transform_points_np(m, corners)
        want = [[0, 0], [input_size[1], input_size[0]], [input_size[1] / 2, input_size[0] / 2]]
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_rotation_is_counter_clockwise_as_displayed():
    m = affine.crop_matrix((100.0, 100.0), 1.0, 1.0, (200, 200), rotation_deg=90.0).numpy()
    right_of_centre = affine.transform_points_np(m, [[150.0, 100.0]])[0]
    np.testing.assert_allclose(right_of_centre, [100.0, 50.0], atol=1e-3)  # now above the centre (y down)


def test_flip_mirrors_about_the_crop_centre():
    args = ((321.0, 123.0), 0.8, 1.25, (256, 192))
    m = affine.crop_matrix(*args).numpy()
    mf = affine.crop_matrix(*args, flip=True).numpy()
    p = _points(1)
    a, b = affine.transform_points_np(m, p), affine.transform_points_np(mf, p)
    np.testing.assert_allclose(b[:, 0], 192.0 - a[:, 0], atol=1e-3)
    np.testing.assert_allclose(b[:, 1], a[:, 1], atol=1e-3)


@SETTINGS
@given(centers, scales, angles, st.booleans(), st.booleans(), shifts, input_sizes, st.integers(0, 2 ** 31))
def test_inverse_round_trips_points(center, scale, angle, flip, vflip, shift, input_size, seed):
    m = affine.crop_matrix(center, scale, 1.25, input_size, rotation_deg=angle, flip=flip,
                           shift=shift, vertical_flip=vflip)
    p = _points(seed)
    back = affine.to_original(m, affine.transform_points(m, p)).numpy()
    assert np.abs(back - p).max() < 1e-3
    m_np = m.numpy().astype(np.float64)          # the host-side (float64) mapping of the same crop
    back_np = affine.to_original_np(m_np, affine.transform_points_np(m_np, p))
    assert np.abs(back_np - p).max() < 1e-6


@SETTINGS
@given(centers, scales, angles, shifts, st.integers(0, 2 ** 31))
def test_flip_twice_is_identity_with_names_swapped_back(center, scale, angle, shift, seed):
    from configs import builtin_spec
    from pipeline.parser import flip_keypoints

    spec = builtin_spec("coco")
    p = _points(seed, spec.num_keypoints).astype(np.float32)
    vis = np.arange(spec.num_keypoints, dtype=np.int32) % 3
    names = np.array(spec.names)
    m = affine.crop_matrix(center, scale, 1.25, (256, 192), rotation_deg=angle, shift=shift)
    mf = affine.crop_matrix(center, scale, 1.25, (256, 192), rotation_deg=angle, shift=shift, flip=True)
    plain = affine.transform_points(m, p)
    once, vis1 = flip_keypoints(affine.transform_points(mf, p), vis, True, spec.flip_indices)
    # channel i now holds the mirror partner: left and right names swapped
    names1 = names[list(spec.flip_indices)]
    assert names1[spec.names.index("left_wrist")] == "right_wrist"
    mirror = np.array([[-1.0, 0.0, 192.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x -> W - x in the crop
    twice, vis2 = flip_keypoints(affine.transform_points(mirror, once), vis1, True, spec.flip_indices)
    names2 = names1[list(spec.flip_indices)]
    assert list(names2) == list(spec.names)
    np.testing.assert_array_equal(vis2.numpy(), vis)
    assert np.abs(twice.numpy() - plain.numpy()).max() < 1e-3 * max(1.0, 1.0 / scale)


def test_frame_mode_letterboxes_the_whole_image():
    for input_size, size in [((256, 256), (480, 640)), ((256, 192), (480, 640)), ((192, 256), (640, 480))]:
        m = affine.crop_matrix(None, None, 1.25, input_size, crop_mode="frame", image_size=size).numpy()
        h, w = size
        got = affine.transform_points_np(m, [[0.0, 0.0], [w, h], [w / 2, h / 2]])
        in_h, in_w = input_size
        zoom = min(in_w / w, in_h / h)
        want = [[in_w / 2 - zoom * w / 2, in_h / 2 - zoom * h / 2],
                [in_w / 2 + zoom * w / 2, in_h / 2 + zoom * h / 2], [in_w / 2, in_h / 2]]
        np.testing.assert_allclose(got, want, atol=1e-3)
    with pytest.raises(ValueError, match="image_size"):
        affine.crop_matrix(None, None, 1.25, (256, 256), crop_mode="frame")
    with pytest.raises(ValueError, match="crop_mode"):
        affine.crop_matrix((1.0, 1.0), 1.0, 1.25, (256, 256), crop_mode="boxes")


def _dot_image(h: int, w: int, x: float, y: float, sigma: float = 1.5) -> np.ndarray:
    """Float image with a Gaussian dot centred at (x, y) in our coordinates."""
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    g = np.exp(-((cx[None, :] - x) ** 2 + (cy[:, None] - y) ** 2) / (2 * sigma ** 2))
    return np.repeat((200.0 * g)[..., None], 3, axis=-1).astype(np.float32)


def _centroid(image: np.ndarray) -> np.ndarray:
    wgt = image[..., 0].astype(np.float64)
    h, w = wgt.shape
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    return np.array([(wgt.sum(0) * cx).sum(), (wgt.sum(1) * cy).sum()]) / wgt.sum()


@settings(max_examples=30, deadline=None)
@given(st.floats(50, 70), st.floats(38, 58), st.floats(0.3, 0.6), angles, st.booleans(), shifts)
def test_warp_puts_a_dot_where_transform_points_says(x, y, scale, angle, flip, shift):
    """Pixel convention of the warp: a dot lands on transform_points(M, dot) to < 0.1 px."""
    image = _dot_image(96, 120, x, y)
    m = affine.crop_matrix((60.0, 48.0), scale, 1.25, (128, 96), rotation_deg=angle, flip=flip,
                           shift=(shift[0] / 4, shift[1] / 4))
    target = affine.transform_points(m, [[x, y]]).numpy()[0]
    warped = affine.warp_image(image, m, (128, 96)).numpy()
    assert warped.shape == (128, 96, 3)
    np.testing.assert_allclose(_centroid(warped), target, atol=0.1)


def test_single_pixel_lands_on_its_pixel():
    """Zoom 1, integer shift: pixel index (r, c) goes to index (r + 5, c - 3) exactly."""
    image = np.zeros((40, 50, 3), np.uint8)
    image[12, 30] = (255, 128, 7)
    side = 64.0 / 1.25  # crop 64x64 at zoom 1
    m = affine.crop_matrix((25.0, 20.0), side / coords.PIXELS_PER_SCALE, 1.25, (64, 64), shift=(7.0, 12.0))
    out = affine.warp_image(image, m, (64, 64)).numpy()
    assert out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 0])
    assert list(zip(rows, cols)) == [(12 + 32 - 20 + 12, 30 + 32 - 25 + 7)]
    np.testing.assert_array_equal(out[36, 44], [255, 128, 7])


def test_flipped_warp_is_the_mirror_image(tfrun, coco_examples):
    from pipeline import decoder

    image = decoder.decode(coco_examples[0])["image"]
    args = ((300.0, 220.0), 1.1, 1.25, (128, 96))

    def warp_pair(img):
        img = tf.cast(img, tf.float32)
        a = affine.warp_image(img, affine.crop_matrix(*args, rotation_deg=17.0), (128, 96))
        b = affine.warp_image(img, affine.crop_matrix(*args, rotation_deg=17.0, flip=True), (128, 96))
        return a, b

    (a, b), (ga, gb) = tfrun(warp_pair, image)
    np.testing.assert_allclose(b, a[:, ::-1], atol=0.05)
    np.testing.assert_allclose(ga, a, atol=1e-4)
    np.testing.assert_allclose(gb, b, atol=1e-4)


def test_ops_agree_eagerly_and_in_tf_data(tfrun):
    def ops(center, scale, angle, points):
        m = affine.crop_matrix(center, scale, 1.25, (256, 192), rotation_deg=angle, flip=True,
                               shift=(3.0, -2.0))
        return m, affine.transform_points(m, points), affine.invert(m), affine.sampling_transform(m)

    args = (tf.constant([310.5, 201.25]), tf.constant(1.7), tf.constant(-23.0),
            tf.constant(_points(3), tf.float32))
    eager, graph = tfrun(ops, *args)
    for e, g in zip(eager, graph):
        np.testing.assert_allclose(e, g, rtol=1e-6, atol=1e-4)


def test_batched_matrices():
    ms = tf.stack([affine.crop_matrix((100.0, 80.0), s, 1.25, (64, 64), rotation_deg=r)
                   for s, r in [(0.5, 0.0), (1.0, 45.0)]])
    p = tf.constant(np.stack([_points(4), _points(5)]), tf.float32)
    out = affine.transform_points(ms, p).numpy()
    np.testing.assert_allclose(out[1], affine.transform_points(ms[1], p[1]).numpy(), atol=1e-3)
    np.testing.assert_allclose(affine.invert(ms).numpy()[0], affine.invert(ms[0]).numpy(), atol=1e-5)
    images = tf.zeros([2, 30, 40, 3], tf.uint8)
    assert affine.warp_image(images, ms, (64, 48)).shape == (2, 64, 48, 3)


def _reference_warp(image: np.ndarray, matrix: np.ndarray, size, fill: float = 0.0) -> np.ndarray:
    """Float64 bilinear sampling with constant fill, written from the convention: output
    pixel centre p + 0.5 -> inv(M) -> minus 0.5 = input index; pixels outside read ``fill``."""
    img = image.astype(np.float64)
    h_in, w_in = img.shape[:2]
    inv = affine.invert_np(matrix)
    jj, ii = np.meshgrid(np.arange(size[1]) + 0.5, np.arange(size[0]) + 0.5)
    x = inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2] - 0.5
    y = inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2] - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def read(r, c):
        ok = (r >= 0) & (r < h_in) & (c >= 0) & (c < w_in)
        v = img[np.clip(r, 0, h_in - 1).astype(int), np.clip(c, 0, w_in - 1).astype(int)]
        return np.where(ok[..., None], v, fill)

    top = read(y0, x0) * (1 - fx) + read(y0, x0 + 1) * fx
    bottom = read(y0 + 1, x0) * (1 - fx) + read(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


@pytest.fixture(scope="module")
def coco_image(coco_examples):
    from pipeline import decoder

    return decoder.decode(coco_examples[5])["image"].numpy()


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 4.0),
       st.sampled_from([0.0, 0.0, 23.0, -11.5]), st.booleans(), st.booleans(), input_sizes,
       st.sampled_from([0.0, 7.0]))
def test_crop_float_matches_a_float64_reference(coco_image, fx, fy, scale, angle, flip, vflip,
                                                input_size, fill):
    """Both samplers (crop_and_resize without rotation, ImageProjectiveTransformV3 with)
    on the source window equal bilinear sampling of the whole image, fill and the
    one-pixel blend at the image border included; crops reach past every border."""
    h, w = coco_image.shape[:2]
    center = (-60.0 + fx * (w + 120.0), -60.0 + fy * (h + 120.0))
    m = affine.crop_matrix(center, scale, 1.25, input_size, rotation_deg=angle, flip=flip,
                           vertical_flip=vflip, shift=(3.25, -1.5))
    got = affine.crop_float(coco_image, m, input_size, fill_value=fill).numpy()
    want = _reference_warp(coco_image, m.numpy().astype(np.float64), input_size, fill)
    assert got.shape == want.shape and got.dtype == np.float32
    err = np.abs(got - want)
    assert err.max() < 0.05 and err.mean() < 2e-3, (err.max(), err.mean())
    u8 = affine.warp_image(coco_image, m, input_size, fill_value=fill).numpy()
    assert np.abs(u8.astype(float) - np.floor(want + 0.5)).max() <= 1      # rounding half up


@pytest.mark.parametrize("flip,vflip", [(False, False), (True, False), (False, True), (True, True)])
def test_resize_and_projective_samplers_agree(coco_image, flip, vflip):
    """Same window, same sampling parameters: the crop_and_resize sampler equals the
    ImageProjectiveTransformV3 one to ~1e-3 grey levels, border fade included."""
    image = tf.constant(coco_image[40:200, 100:330])          # crops reach past its borders
    cases = [((115.0, 80.0), 0.9, 0.0), ((10.0, 150.0), 0.4, 0.0), ((200.0, 20.0), 1.7, 9.0)]
    for center, scale, fill in cases:
        m = affine.crop_matrix(center, scale, 1.25, (128, 96), flip=flip, vertical_flip=vflip,
                               shift=(2.5, -4.0))
        params = tf.cast(affine.sampling_transform(m)[:6], tf.float64)
        fast = affine.resize_window(image, params, (128, 96), fill).numpy()
        slow = affine.project_window(image, params, (128, 96), fill).numpy()
        assert (slow == fill).mean() > 0.01                     # fill and border fade are covered
        err = np.abs(fast - slow)
        assert err.max() < 0.01 and err.mean() < 1e-3, (err.max(), err.mean())


@settings(max_examples=20, deadline=None)
@given(st.floats(-60.0, 260.0), st.floats(-60.0, 200.0), st.floats(0.2, 2.0), angles, st.booleans(),
       st.sampled_from([0.0, 9.0]), st.sampled_from(["uint8", "float32"]))
def test_xla_and_projective_rotated_samplers_agree(coco_image, cx, cy, scale, angle, flip, fill, dtype):
    """The XLA gather sampler equals ImageProjectiveTransformV3 on the same window, for any
    rotation and flip, crops reaching past the window, uint8 or float pixels, eagerly and
    inside tf.data (where it is compiled per bucket of window pixel counts)."""
    image = tf.cast(tf.constant(coco_image[40:200, 100:330]), dtype)
    m = affine.crop_matrix((cx, cy), scale, 1.25, (64, 48), rotation_deg=angle, flip=flip)
    params = tf.cast(affine.sampling_transform(m)[:6], tf.float64)
    xla = affine.gather_window(image, params, (64, 48), fill).numpy()
    reference = affine.project_window(image, params, (64, 48), fill).numpy()
    err = np.abs(xla - reference)
    assert err.max() < 0.02 and err.mean() < 1e-3, (err.max(), err.mean())
    ds = tf.data.Dataset.from_tensors((image, params)).map(
        lambda im, p: affine.gather_window(im, p, (64, 48), fill))
    np.testing.assert_allclose(next(iter(ds)).numpy(), xla, atol=1e-4)


def test_xla_sampler_beyond_the_largest_bucket_takes_the_projective_op(coco_image, monkeypatch):
    image = tf.constant(coco_image[:100, :100])
    m = affine.crop_matrix((50.0, 50.0), 0.5, 1.25, (32, 32), rotation_deg=20.0)
    params = tf.cast(affine.sampling_transform(m)[:6], tf.float64)
    monkeypatch.setattr(affine, "_BUCKETS", (64, 96))            # 100x100 = 10000 px > 96
    out = affine.gather_window(image, params, (32, 32)).numpy()
    np.testing.assert_array_equal(out, affine.project_window(image, params, (32, 32)).numpy())
    with pytest.raises(ValueError, match="rotated must be one of"):
        affine.crop_window(lambda w: image, (100, 100), m, (32, 32), rotated="nearest")


def test_source_window_covers_what_the_crop_reads(coco_image):
    """The window is small for a small crop, clamped to the image, and at least one pixel
    when the crop misses the image entirely (then the crop is all fill)."""
    h, w = coco_image.shape[:2]
    m = affine.crop_matrix((200.0, 150.0), 0.3, 1.25, (64, 64), rotation_deg=30.0)
    y0, x0, y1, x1 = affine.source_window(m, (h, w), (64, 64)).numpy()
    side = 0.3 * 200 * 1.25 * 2 ** 0.5                          # rotated square's extent
    assert 0 < y1 - y0 <= side + 4 and 0 < x1 - x0 <= side + 4
    whole = affine.source_window(affine.crop_matrix((w / 2, h / 2), 9.0, 1.25, (64, 64)), (h, w), (64, 64))
    np.testing.assert_array_equal(whole.numpy(), [0, 0, h, w])
    far = affine.crop_matrix((-900.0, 5000.0), 0.5, 1.25, (64, 64))
    y0, x0, y1, x1 = affine.source_window(far, (h, w), (64, 64)).numpy()
    assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
    assert affine.crop_float(coco_image, far, (64, 64)).numpy().max() == 0.0


def test_to_uint8_rounds_half_up_and_clips():
    values = np.concatenate([np.arange(-3.0, 260.0, 0.25), [0.49999997, 0.5, 254.5, 255.49, 1e9, -1e9],
                             np.random.default_rng(0).uniform(-20.0, 280.0, 20000)]).astype(np.float32)
    want = np.clip(np.floor(values + np.float32(0.5)), 0, 255).astype(np.uint8)   # float32 sum, as TF
    np.testing.assert_array_equal(affine.to_uint8(values).numpy(), want)
    image = tf.reshape(tf.constant(values[:3 * 1000]), [10, 100, 3])
    np.testing.assert_array_equal(affine.to_uint8(image).numpy(), want[:3000].reshape(10, 100, 3))
