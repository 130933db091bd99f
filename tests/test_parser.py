"""Parser: each op eagerly and inside tf.data, eval/train outputs on real records, flips,
augmentation draws, and a graph free of py_func ops."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from configs.keypoints import KeypointSpec
from pipeline import affine, decoder
from pipeline.parser import (
    Parser,
    ParserConfig,
    color_jitter,
    crop_center_scale,
    draw_augmentation,
    flip_keypoints,
)

NO_AUG = ParserConfig(scale_range=(1.0, 1.0), rotation_prob=0.0, flip_prob=0.0, vertical_flip_prob=0.0,
                      translate_frac=0.0, color_jitter=0.0)
SEED = tf.constant([7, 11], tf.int64)


@pytest.fixture(scope="module")
def decoded(coco_examples):
    return decoder.decode(coco_examples[3])


def _np(x):
    return tf.nest.map_structure(np.asarray, x)


def test_config_is_validated():
    for bad in ({"crop_mode": "whole"}, {"flip_prob": 1.5}, {"scale_range": (1.2, 0.8)},
                {"color_jitter": 1.0}, {"padding": 0.0}, {"input_size": (256,)},
                {"rotated_sampler": "nearest"}):
        with pytest.raises(ValueError, match="ParserConfig"):
            ParserConfig(**bad)
    assert ParserConfig().input_size == (256, 256) and ParserConfig().sigma == 2.0


def test_parse_eval_real_record(tfrun, decoded, coco_spec):
    parser = Parser(ParserConfig(), coco_spec)
    (image, labels), (g_image, g_labels) = tfrun(parser.parse_eval, decoded)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert labels["heatmaps"].shape == (64, 64, 17) and labels["heatmaps"].dtype == np.float32
    np.testing.assert_array_equal(g_image, image)
    assert g_labels.pop("source_id") == labels["source_id"]
    for key in g_labels:
        np.testing.assert_allclose(g_labels[key], labels[key], atol=1e-4, err_msg=key)
    d = _np(decoded)
    m = labels["matrix"]
    np.testing.assert_allclose(affine.transform_points_np(m, [d["center"]])[0], [128, 128], atol=1e-3)
    vis = d["visibility"] > 0
    crop = affine.transform_points_np(m, d["keypoints"])
    np.testing.assert_allclose(labels["keypoints"][vis], crop[vis], atol=1e-3)
    np.testing.assert_array_equal(labels["keypoints"][~vis], 0.0)
    inside = vis & (crop >= 0).all(1) & (crop < 256).all(1)
    np.testing.assert_array_equal(labels["weights"], inside.astype(np.float32))
    np.testing.assert_allclose(affine.transform_points_np(affine.invert_np(m), labels["keypoints"][vis]),
                               d["keypoints"][vis], atol=1e-3)
    for key in ("source_id", "annotation_id", "bbox", "area", "head_size", "scale", "center"):
        np.testing.assert_array_equal(labels[key], d[key])
    np.testing.assert_array_equal(labels["image_size"], [d["height"], d["width"]])
    np.testing.assert_array_equal(labels["orig_keypoints"], d["keypoints"])


def test_eval_crop_matches_an_independent_warp(decoded, coco_spec):
    """The image crop agrees with OpenCV's warpAffine given the same matrix moved to pixel
    indices (index = coordinate - 0.5): image and keypoints share one convention."""
    import cv2

    image, labels = Parser(ParserConfig(), coco_spec).parse_eval(decoded)
    m = labels["matrix"].numpy().astype(np.float64)
    to_index = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    m_index = to_index @ m @ np.linalg.inv(to_index)
    ref = cv2.warpAffine(decoded["image"].numpy(), m_index[:2], (256, 256), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    diff = np.abs(image.numpy().astype(int) - ref.astype(int))
    assert diff.mean() < 0.05 and diff.max() <= 2   # a half-pixel slip gives mean ~2.4, max ~90


def test_train_without_augmentation_equals_eval(decoded, coco_spec):
    image, labels = Parser(NO_AUG, coco_spec).parse_train(decoded, SEED)
    e_image, e_labels = Parser(NO_AUG, coco_spec).parse_eval(decoded)
    # Training samples the window clipped at the image's end (faster), eval as if the image
    # went on (the one-file TFLite's exact crop): the same pixels to float rounding, so a
    # value on a .5 boundary may move by one level, nothing more.
    step = np.abs(image.numpy().astype(int) - e_image.numpy().astype(int))
    assert step.max() <= 1 and (step > 0).mean() < 1e-4
    for key in ("heatmaps", "weights", "keypoints", "visibility"):
        np.testing.assert_allclose(labels[key].numpy(), e_labels[key].numpy(), atol=1e-5)


def test_parse_train_is_reproducible_from_its_seed(tfrun, decoded, coco_spec):
    parser = Parser(ParserConfig(), coco_spec)
    (image, labels), (g_image, g_labels) = tfrun(parser.parse_train, decoded, SEED)
    _, (g_again, _) = tfrun(parser.parse_train, decoded, SEED)
    np.testing.assert_array_equal(g_again, g_image)      # tf.data: bit-identical from the seed
    again, _ = parser.parse_train(decoded, SEED)
    np.testing.assert_array_equal(again.numpy(), image)  # eager: bit-identical too
    # Eager and graph kernels of the colour matmul may round differently in the last bit,
    # which can move a pixel that sits on a .5 boundary by one level, nothing more.
    step = np.abs(image.astype(int) - g_image.astype(int))
    assert step.max() <= 1 and (step > 0).mean() < 1e-3
    np.testing.assert_allclose(labels["heatmaps"], g_labels["heatmaps"], atol=1e-5)
    other, _ = parser.parse_train(decoded, tf.constant([7, 12], tf.int64))
    assert np.abs(other.numpy().astype(int) - image.astype(int)).mean() > 1.0
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert set(labels) == {"heatmaps", "weights", "keypoints", "visibility"}


def test_horizontal_flip_mirrors_image_and_swaps_left_right(tfrun, decoded, coco_spec):
    flip = dataclasses.replace(NO_AUG, flip_prob=1.0)
    (image, labels), _ = tfrun(Parser(NO_AUG, coco_spec).parse_train, decoded, SEED)
    (f_image, f_labels), (g_image, _) = tfrun(Parser(flip, coco_spec).parse_train, decoded, SEED)
    np.testing.assert_array_equal(f_image, g_image)
    diff = np.abs(f_image.astype(int) - image[:, ::-1].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
    idx = list(coco_spec.flip_indices)
    vis = labels["visibility"][idx]
    np.testing.assert_array_equal(f_labels["visibility"], vis)
    np.testing.assert_array_equal(f_labels["weights"], labels["weights"][idx])
    want = labels["keypoints"][idx].copy()
    want[:, 0] = 256.0 - want[:, 0]
    np.testing.assert_allclose(f_labels["keypoints"][vis > 0], want[vis > 0], atol=1e-3)
    left_wrist = coco_spec.names.index("left_wrist")
    assert f_labels["visibility"][left_wrist] == labels["visibility"][coco_spec.names.index("right_wrist")]
    np.testing.assert_allclose(f_labels["heatmaps"], labels["heatmaps"][:, ::-1][..., idx], atol=1e-5)


def test_vertical_flip_only_with_vertical_pairs(decoded):
    names = ("top", "bottom", "left", "right")
    plain = KeypointSpec(names, flip_pairs=((2, 3),))
    with_v = KeypointSpec(names, flip_pairs=((2, 3),), vertical_flip_pairs=((0, 1),))
    d = dict(decoded)
    d["keypoints"] = tf.constant([[300.0, 150.0], [300.0, 300.0], [250.0, 220.0], [350.0, 220.0]])
    d["visibility"] = tf.constant([2, 2, 2, 1], tf.int32)
    vflip = dataclasses.replace(NO_AUG, vertical_flip_prob=1.0)
    base_image, base = Parser(NO_AUG, plain).parse_train(d, SEED)
    image, labels = Parser(vflip, plain).parse_train(d, SEED)
    np.testing.assert_array_equal(image.numpy(), base_image.numpy())      # never flipped upside down
    v_image, v_labels = Parser(vflip, with_v).parse_train(d, SEED)
    assert np.abs(v_image.numpy().astype(int) - base_image.numpy()[::-1].astype(int)).max() <= 1
    want = base["keypoints"].numpy()[[1, 0, 2, 3]]
    want[:, 1] = 256.0 - want[:, 1]
    np.testing.assert_allclose(v_labels["keypoints"].numpy(), want, atol=1e-3)
    np.testing.assert_array_equal(v_labels["visibility"].numpy(), [2, 2, 2, 1])
    # the record's top point is now the bottom one and sits lower in the crop
    assert v_labels["keypoints"].numpy()[1, 1] > v_labels["keypoints"].numpy()[0, 1]


def test_augmentation_draws_follow_the_config(tfrun):
    cfg = ParserConfig()
    seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), num=2000)
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: draw_augmentation(s, cfg, False)).batch(2000)
    draws = _np(next(iter(ds)))
    assert 0.75 <= draws["scale_factor"].min() and draws["scale_factor"].max() <= 1.25
    rotated = draws["rotation_deg"] != 0
    assert 0.55 < rotated.mean() < 0.65 and np.abs(draws["rotation_deg"]).max() <= 30.0
    assert 0.45 < draws["flip"].mean() < 0.55 and not draws["vertical_flip"].any()
    assert np.abs(draws["shift"]).max() <= 0.05 * 256 + 1e-4
    assert 0.8 <= draws["color"].min() and draws["color"].max() <= 1.2
    eager, graph = tfrun(lambda s: draw_augmentation(s, cfg, True), SEED)
    for key in eager:
        np.testing.assert_allclose(np.asarray(eager[key], float), np.asarray(graph[key], float), atol=1e-6)


def test_color_jitter_matches_the_sequential_definition(tfrun):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (32, 24, 3)).astype(np.float32)
    factors = np.array([1.1, 0.85, 1.2, 0.8, 1.15], np.float32)
    eager, graph = tfrun(color_jitter, image, factors)
    luma = np.array([0.299, 0.587, 0.114])
    gained = image * factors[:3]
    mean = (gained[::8, ::8] @ luma).mean()
    contrasted = mean + (gained - mean) * factors[3]
    grey = (contrasted @ luma)[..., None]
    want = grey + (contrasted - grey) * factors[4]
    np.testing.assert_allclose(eager, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(graph, eager, atol=1e-3)
    same, _ = tfrun(color_jitter, image, np.ones(5, np.float32))
    np.testing.assert_allclose(same, image, atol=1e-3)


def test_flip_keypoints_and_crop_center_scale(tfrun, decoded):
    kp = np.arange(8, dtype=np.float32).reshape(4, 2)
    vis = np.array([2, 1, 0, 2], np.int32)
    (k, v), (gk, gv) = tfrun(lambda a, b, f: flip_keypoints(a, b, f, (1, 0, 3, 2)), kp, vis, True)
    np.testing.assert_array_equal(k, kp[[1, 0, 3, 2]])
    np.testing.assert_array_equal(v, [1, 2, 2, 0])
    np.testing.assert_array_equal(gk, k)
    (k, v), _ = tfrun(lambda a, b, f: flip_keypoints(a, b, f, (1, 0, 3, 2)), kp, vis, False)
    np.testing.assert_array_equal(k, kp)
    box = tfrun(lambda d: crop_center_scale(d, ParserConfig()), decoded)
    np.testing.assert_allclose(box[0][0], decoded["center"].numpy())
    frame = tfrun(lambda d: crop_center_scale(d, ParserConfig(crop_mode="frame")), decoded)
    np.testing.assert_allclose(frame[0][0], frame[1][0])
    h, w = decoded["height"].numpy(), decoded["width"].numpy()
    np.testing.assert_allclose(frame[0][0], [w / 2, h / 2])


def test_frame_mode_on_a_video_frame(dlc_example):
    """DLC frame 640x480 into 256x192 (W x H... input_size is (H, W) = (192, 256)): the whole
    frame fits exactly, keypoints scale by 0.4."""
    example, record, names = dlc_example
    spec = KeypointSpec(tuple(names), flip_pairs=((1, 2),))
    parser = Parser(ParserConfig(input_size=(192, 256), crop_mode="frame"), spec)
    image, labels = parser.parse_eval(decoder.decode(example))
    kp = np.asarray(record.keypoints)[:, :2]
    np.testing.assert_allclose(labels["keypoints"].numpy(), kp * 0.4, atol=1e-3)
    src = tf.io.decode_png(open(record.image_path, "rb").read(), channels=3).numpy()
    small = tf.image.resize(src.astype(np.float32), (192, 256), antialias=True).numpy()
    assert np.abs(image.numpy().astype(float) - small).mean() < 6.0
    image, labels = Parser(ParserConfig(input_size=(256, 256), crop_mode="frame"), spec).parse_eval(
        decoder.decode(example))
    assert image.numpy()[:30].max() == 0 and image.numpy()[-30:].max() == 0     # letterbox bars
    assert image.numpy()[40:216].mean() > 20


def test_keypoint_count_mismatch_names_the_record(dlc_example, coco_spec):
    example, record, _ = dlc_example
    with pytest.raises(tf.errors.InvalidArgumentError, match="keypoint spec") as err:
        Parser(ParserConfig(), coco_spec).parse_eval(decoder.decode(example))
    assert record.filename in str(err.value)


def _op_types(concrete) -> set:
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for fn in graph_def.library.function:
        types |= {node.op for node in fn.node_def}
    return types


def test_train_map_function_is_pure_graph(coco_spec):
    """Parser.decode + parse_train (what the input reader maps) trace to a graph with no
    py_func ops: one windowed JPEG decode, one crop_and_resize and one XLA-compiled gather
    sampler (the two branches of the crop, in cond branch functions; the projective op is
    the sampler's fallback for huge windows) and only stateless random ops."""
    parser = Parser(ParserConfig(), coco_spec)
    fn = tf.function(lambda s, seed: parser.parse_train(parser.decode(s), seed))
    concrete = fn.get_concrete_function(tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64))
    types = _op_types(concrete)
    assert not types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    graph_def = concrete.graph.as_graph_def()
    ops = [n.op for n in graph_def.node] + [n.op for fn in graph_def.library.function for n in fn.node_def]
    assert ops.count("DecodeAndCropJpeg") == 1 and ops.count("DecodeImage") <= 1   # PNG: whole
    assert ops.count("ImageProjectiveTransformV3") == 1 and ops.count("CropAndResize") == 1
    compiled = [f for f in graph_def.library.function
                if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
    assert len(compiled) == 1 and "GatherV2" in {n.op for n in compiled[0].node_def}
    random_ops = {t for t in types if "Random" in t}
    assert random_ops and all(t.startswith("Stateless") for t in random_ops), random_ops
    for name, fn in (("eval", lambda s: parser.parse_eval(parser.decode(s))),):
        c = tf.function(fn).get_concrete_function(tf.TensorSpec([], tf.string))
        assert not _op_types(c) & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}, name


def _in_tf_data(fn, examples, seeds):
    """fn(serialized, seed) mapped over the examples inside tf.data (graph mode), one trace for
    all of them: the list of numpy results, in order."""
    ds = tf.data.Dataset.from_tensor_slices((list(examples), np.asarray(seeds, np.int64))).map(fn)
    return [tf.nest.map_structure(np.asarray, r) for r in ds]


def test_windowed_decoding_gives_the_same_examples(coco_examples, coco_spec):
    """Parser.decode leaves the JPEG encoded and the crop decodes only its window: train
    (rotated and not) and eval examples equal those parsed from the fully decoded image
    (inside tf.data, as training runs them)."""
    parser = Parser(ParserConfig(rotation_prob=0.5), coco_spec)
    examples, seeds = coco_examples[:6], [[i, 5] for i in range(6)]
    for parse in (parser.parse_train, lambda d, seed: parser.parse_eval(d)):
        whole = _in_tf_data(lambda s, seed: parse(decoder.decode(s), seed), examples, seeds)
        lazy = _in_tf_data(lambda s, seed: parse(parser.decode(s), seed), examples, seeds)
        assert len(whole) == len(lazy) == 6
        for w, z in zip(whole, lazy):
            np.testing.assert_array_equal(z[0], w[0])
            for key in ("heatmaps", "keypoints", "weights"):
                np.testing.assert_array_equal(z[1][key], w[1][key])


def test_rotated_samplers_give_the_same_training_examples(coco_examples, coco_spec):
    """rotated_sampler "xla" and "projective": the same crops to one grey level after rounding
    (inside tf.data, as training runs them)."""
    rotate = dataclasses.replace(ParserConfig(), rotation_prob=1.0)
    xla = Parser(rotate, coco_spec)
    projective = Parser(dataclasses.replace(rotate, rotated_sampler="projective"), coco_spec)
    examples, seeds = coco_examples[:4], [[i, 9] for i in range(4)]
    by_xla = _in_tf_data(lambda s, seed: xla.parse_train(xla.decode(s), seed), examples, seeds)
    by_projective = _in_tf_data(lambda s, seed: projective.parse_train(projective.decode(s), seed),
                                examples, seeds)
    assert len(by_xla) == len(by_projective) == 4
    for (a, a_labels), (b, b_labels) in zip(by_xla, by_projective):
        step = np.abs(a.astype(int) - b.astype(int))
        assert step.max() <= 1 and (step > 0).mean() < 0.01
        np.testing.assert_array_equal(a_labels["heatmaps"], b_labels["heatmaps"])
