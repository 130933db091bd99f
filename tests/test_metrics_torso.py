"""Torso PCK (the LSP convention) and OKS sigmas as part of the keypoint definition.

Hand-made cases give exact counts; hypothesis checks that torso PCK is invariant under a
similarity transform of prediction and truth, and that the TF version (run inside a
tf.function, as validation runs it) equals the numpy one. Sigma files are validated with
file and line; the sigmas travel through to_dict/from_dict, the definition files, model
metadata and dataset_info.json. OKS AP from ground truth built out of the records equals
pycocotools on the official COCO json; a skeleton without sigmas gets no AP and says why.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from configs import KeypointSpec, KeypointSpecError, builtin_spec, load_keypoint_spec
from configs.keypoints import COCO_OKS_SIGMAS
from model.metrics import (
    KeypointAccumulator,
    coco_keypoint_ap,
    coco_result,
    torso_diagonals,
    torso_pck_counts,
    torso_pck_metrics,
    torso_size,
)
from tests.conftest import DLC_DIR

LSP = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
       "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
       "left_wrist", "neck", "head_top"]
IDX = {n: i for i, n in enumerate(LSP)}


def _person(ls, rs, lh, rh, labelled=None):
    """One LSP example: torso corners given, every other joint at the origin."""
    kp = np.zeros((len(LSP), 2))
    for name, xy in (("left_shoulder", ls), ("right_shoulder", rs), ("left_hip", lh), ("right_hip", rh)):
        kp[IDX[name]] = xy
    lab = np.ones(len(LSP), bool) if labelled is None else np.asarray(labelled, bool)
    return kp, lab


# ----------------------------------------------------------------------------- torso size


def test_torso_is_left_shoulder_right_hip_then_the_other_diagonal_then_none():
    d = torso_diagonals(LSP)
    assert d == ((IDX["left_shoulder"], IDX["right_hip"]), (IDX["right_shoulder"], IDX["left_hip"]))
    a, la = _person((0, 0), (10, 0), (10, 40), (0, 30))        # ls-rh = 30, rs-lh = 40
    b, lb = _person((0, 0), (10, 0), (10, 40), (0, 30))
    lb[IDX["right_hip"]] = False                                   # fallback: rs-lh = 40
    c, lc = _person((0, 0), (10, 0), (10, 40), (0, 30))
    lc[[IDX["right_hip"], IDX["left_hip"]]] = False                  # no diagonal labelled
    e, le = _person((5, 5), (10, 0), (10, 0), (5, 5))            # both diagonals of length 0
    size = torso_size(np.stack([a, b, c, e]), np.stack([la, lb, lc, le]), d)
    assert size[0] == 30 and size[1] == 40
    assert math.isnan(size[2]) and math.isnan(size[3])
    assert torso_diagonals(["snout", "leftear", "rightear", "tailbase"]) == ()
    # one diagonal present is enough (its names); the other one is never used
    assert torso_diagonals(["right_shoulder", "left_hip", "nose"]) == ((0, 1),)


def test_torso_pck_exact_counts_per_joint_and_alpha():
    d = torso_diagonals(LSP)
    gt1, lab1 = _person((0, 0), (10, 0), (10, 40), (0, 30))     # torso 30: 0.2 -> 6 px, 0.1 -> 3 px
    gt2, lab2 = _person((0, 0), (10, 0), (10, 40), (0, 30))
    lab2[IDX["right_hip"]] = False                                  # torso 40: 8 px / 4 px
    gt3, lab3 = _person((0, 0), (10, 0), (10, 40), (0, 30))
    lab3[[IDX["left_shoulder"], IDX["right_shoulder"]]] = False       # not scored at all
    pred1, pred2, pred3 = gt1.copy(), gt2.copy(), gt3.copy()
    pred1[IDX["neck"]] += (5, 0)        # 5 px: correct at 0.2 (< 6), wrong at 0.1
    pred1[IDX["head_top"]] += (0, 2)    # correct at both
    pred1[IDX["left_wrist"]] += (7, 0)  # wrong at both
    pred2[IDX["neck"]] += (5, 0)        # correct at 0.2 (< 8), wrong at 0.1 (> 4)
    pred2[IDX["left_wrist"]] += (3.9, 0)  # correct at both
    pred2[IDX["right_hip"]] += (100, 0)   # unlabelled: never counted
    pred3[:] += 1000                  # no torso: never counted
    gt, pred = np.stack([gt1, gt2, gt3]), np.stack([pred1, pred2, pred3])
    lab = np.stack([lab1, lab2, lab3])
    correct, total, scored, without = torso_pck_counts(pred, gt, lab, d, alphas=(0.2, 0.1))
    assert (scored, without) == (2, 1)
    expect_total = np.full(len(LSP), 2.0)
    expect_total[IDX["right_hip"]] = 1
    np.testing.assert_array_equal(total, expect_total)
    at02 = expect_total.copy()
    at02[IDX["left_wrist"]] = 1          # example 1 wrong
    at01 = at02.copy()
    at01[IDX["neck"]] = 0                # wrong in both at 0.1
    np.testing.assert_array_equal(correct[0], at02)
    np.testing.assert_array_equal(correct[1], at01)

    m = torso_pck_metrics(LSP, correct, total, scored, without)
    assert m["pck_torso@0.2"] == pytest.approx(at02.sum() / expect_total.sum())
    assert m["pck_torso@0.1"] == pytest.approx(at01.sum() / expect_total.sum())
    assert m["pck_torso@0.2_per_keypoint"]["left_wrist"] == 0.5
    assert m["pck_torso@0.1_per_keypoint"]["neck"] == 0.0
    assert m["pck_torso@0.2_per_keypoint"]["right_hip"] == 1.0
    assert (m["pck_torso_examples_scored"], m["pck_torso_examples_without_torso"]) == (2, 1)
    assert "pck_torso_unavailable" not in m


def test_no_torso_names_no_keys_and_a_reason():
    names = ["snout", "leftear", "rightear", "tailbase"]
    acc = KeypointAccumulator(4, 2.0, names)
    xy = np.random.default_rng(0).uniform(0, 50, (3, 4, 2))
    acc.add(xy, xy, np.ones((3, 4)), xy, xy, np.full((3, 4), 2), np.full(3, -1.0))
    out = acc.result(names)
    assert not any(k.startswith("pck_torso@") for k in out)
    assert "left_shoulder-right_hip" in out["pck_torso_unavailable"]
    assert out["mean_error_px"] == 0.0


def test_no_example_with_a_torso_is_reported_not_zero():
    kp, lab = _person((0, 0), (10, 0), (10, 40), (0, 30))
    lab[[IDX["left_hip"], IDX["right_hip"]]] = False
    m = torso_pck_metrics(LSP, *torso_pck_counts(kp[None], kp[None], lab[None], torso_diagonals(LSP)))
    assert m["pck_torso@0.2"] is None and m["pck_torso_examples_without_torso"] == 1
    assert "no example" in m["pck_torso_unavailable"]


def test_accumulator_scores_original_pixels_with_labelled_joints():
    gt, lab = _person((100, 100), (140, 100), (140, 220), (100, 190))   # torso (ls-rh) 90
    pred = gt + np.array([17.0, 0.0])                                   # 17 px: < 18, > 9
    vis = np.where(lab, 2, 0)
    vis[IDX["neck"]] = 0
    acc = KeypointAccumulator(len(LSP), 1.0, LSP)
    # crop coordinates do not matter for torso PCK
    acc.add(np.zeros((1, 14, 2)), np.zeros((1, 14, 2)), np.ones((1, 14)), pred[None], gt[None],
            vis[None], np.array([-1.0]))
    out = acc.result(LSP)
    assert out["pck_torso@0.2"] == 1.0 and out["pck_torso@0.1"] == 0.0
    assert out["pck_torso@0.2_per_keypoint"]["neck"] is None
    assert out["pck_torso_examples_scored"] == 1


# ----------------------------------------------------------------------------- properties


@st.composite
def batches(draw):
    b = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    gt = rng.uniform(-200, 200, (b, len(LSP), 2))
    pred = gt + rng.normal(0, draw(st.floats(1, 60)), gt.shape)
    lab = rng.uniform(size=(b, len(LSP))) < draw(st.floats(0.3, 1.0))
    return pred, gt, lab


def _far_from_thresholds(pred, gt, lab, alphas=(0.2, 0.1), margin=1e-4):
    size = torso_size(gt, lab, torso_diagonals(LSP))
    ratio = np.linalg.norm(pred - gt, axis=-1) / size[:, None]
    return all(np.all(~np.isfinite(ratio) | (np.abs(ratio - a) > margin)) for a in alphas)


@settings(max_examples=60, deadline=None)
@given(batches(), st.floats(0, 2 * np.pi), st.floats(0.05, 20), st.booleans(),
       st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)))
def test_torso_pck_is_invariant_under_a_similarity(batch, angle, scale, mirror, shift):
    pred, gt, lab = batch
    assume(_far_from_thresholds(pred, gt, lab))
    c, s = math.cos(angle), math.sin(angle)
    m = scale * np.array([[c, -s], [s, c]]) @ (np.diag([-1.0, 1.0]) if mirror else np.eye(2))

    def move(x):
        return x @ m.T + np.asarray(shift)

    d = torso_diagonals(LSP)
    before = torso_pck_counts(pred, gt, lab, d)
    after = torso_pck_counts(move(pred), move(gt), lab, d)
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def tf_counts():
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp
    d = torso_diagonals(LSP)

    k = len(LSP)

    @tf.function(input_signature=[tf.TensorSpec([None, k, 2], tf.float32)] * 2
                 + [tf.TensorSpec([None, k], tf.bool)])
    def run(pred, gt, lab):
        return torso_pck_counts(pred, gt, lab, d, xp=tnp)

    return lambda p, g, lab: [np.asarray(x) for x in run(
        tf.constant(p, tf.float32), tf.constant(g, tf.float32), tf.constant(lab))]


@settings(max_examples=40, deadline=None)
@given(batches())
def test_tf_version_equals_numpy(tf_counts, batch):
    pred, gt, lab = batch
    assume(_far_from_thresholds(pred, gt, lab, margin=1e-3))   # float32 vs float64
    expected = torso_pck_counts(pred, gt, lab, torso_diagonals(LSP))
    for x, y in zip(expected, tf_counts(pred, gt, lab)):
        np.testing.assert_array_equal(np.asarray(x, np.float32), y)
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp
    np.testing.assert_allclose(
        torso_size(tf.constant(gt), tf.constant(lab), torso_diagonals(LSP), xp=tnp).numpy(),
        torso_size(gt, lab, torso_diagonals(LSP)), rtol=1e-12)


# ----------------------------------------------------------------------------- sigma files


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


NAMES5 = "nose\nleft_eye\nright_eye\nleft_ear\nright_ear\n"
GOOD5 = "# sigmas\nnose,0.026\n\nleft_eye,0.025\nright_eye,0.025\nleft_ear,0.035\nright_ear,0.035\n"

BAD_SIGMAS = [  # (text, line the error names, words)
    ("nose,0.026\nleft_eye,0.025\nright_eye,0.025\nleft_ear,0.035\nright_ear,0.035\nleft_toe,0.1\n",
     6, "unknown keypoint 'left_toe'"),
    ("nose,0.026\nleft_eye,0.025\nnose,0.03\n", 3, "second sigma for 'nose' (first at"),
    ("nose,0\n", 1, "finite number > 0"),
    ("# x\nnose,-0.1\n", 2, "finite number > 0"),
    ("nose,nan\n", 1, "finite number > 0"),
    ("nose,inf\n", 1, "finite number > 0"),
    ("nose,abc\n", 1, "must be a number"),
    ("nose,0.1,2\n", 1, "2 comma-separated"),
    ("nose,0.026\nleft_eye,0.025\n", 2, "no sigma for 3 keypoint(s): right_eye, left_ear, right_ear"),
]


@pytest.mark.parametrize("text,line,words", BAD_SIGMAS)
def test_bad_sigma_files_name_file_and_line(tmp_path, text, line, words):
    classes = _write(tmp_path, "classes.txt", NAMES5)
    sigmas = _write(tmp_path, "sigmas.txt", text)
    with pytest.raises(KeypointSpecError) as err:
        load_keypoint_spec(classes, sigmas_path=sigmas)
    assert f"{sigmas}:{line}:" in str(err.value)
    assert words in str(err.value)


def test_empty_or_missing_sigma_file(tmp_path):
    classes = _write(tmp_path, "classes.txt", NAMES5)
    with pytest.raises(KeypointSpecError, match="no 'name,sigma' line"):
        load_keypoint_spec(classes, sigmas_path=_write(tmp_path, "s.txt", "# nothing\n"))
    with pytest.raises(KeypointSpecError, match="not found"):
        load_keypoint_spec(classes, sigmas_path=str(tmp_path / "nope.txt"))


def test_sigmas_load_in_channel_order_and_round_trip(tmp_path):
    classes = _write(tmp_path, "classes.txt", NAMES5)
    shuffled = "right_ear,0.035\nnose,0.026\nleft_ear,0.034\nright_eye,0.025\nleft_eye,0.024\n"
    spec = load_keypoint_spec(classes, sigmas_path=_write(tmp_path, "s.txt", shuffled))
    assert spec.oks_sigmas == (0.026, 0.024, 0.025, 0.034, 0.035)
    data = spec.to_dict()
    assert data["oks_sigmas"] == {"nose": 0.026, "left_eye": 0.024, "right_eye": 0.025,
                                  "left_ear": 0.034, "right_ear": 0.035}
    assert KeypointSpec.from_dict(json.loads(json.dumps(data))) == spec
    files = spec.write(str(tmp_path / "out"), "keypoints")
    assert os.path.basename(files["sigmas_path"]) == "keypoints_sigmas.txt"
    assert load_keypoint_spec(**files) == spec
    # without a sigma file: five of COCO's names are not COCO's skeleton: no sigmas, no file
    plain = load_keypoint_spec(classes)
    assert plain.oks_sigmas is None and plain.to_dict()["oks_sigmas"] is None
    assert "sigmas_path" not in plain.write(str(tmp_path / "plain"), "keypoints")


def test_coco_names_get_coco_sigmas_and_others_none():
    coco = builtin_spec("coco")
    assert coco.oks_sigmas == tuple(COCO_OKS_SIGMAS[n] for n in coco.names)
    assert builtin_spec("mpii").oks_sigmas is None
    assert KeypointSpec(names=tuple(LSP)).oks_sigmas is None
    # an old dataset_info.json / metadata without the key: COCO names -> COCO's, else none
    old = {k: v for k, v in coco.to_dict().items() if k != "oks_sigmas"}
    assert KeypointSpec.from_dict(old) == coco
    old_mpii = {k: v for k, v in builtin_spec("mpii").to_dict().items() if k != "oks_sigmas"}
    assert KeypointSpec.from_dict(old_mpii).oks_sigmas is None


@pytest.mark.parametrize("bad,words", [
    ({"nose": 0.1}, "no sigma for 16 keypoint(s)"),
    ({**COCO_OKS_SIGMAS, "tail": 0.1}, "unknown keypoint 'tail'"),
    ({**COCO_OKS_SIGMAS, "nose": -1}, "finite number > 0"),
    ([0.1] * 17, "expected {name: sigma}"),
])
def test_bad_sigmas_in_a_dict_name_the_source(bad, words):
    data = dict(builtin_spec("coco").to_dict(), oks_sigmas=bad)
    with pytest.raises(KeypointSpecError) as err:
        KeypointSpec.from_dict(data, "dataset_info.json")
    assert "dataset_info.json:oks_sigmas" in str(err.value) and words in str(err.value)


def test_model_card_carries_the_sigmas(tmp_path):
    from model.card import ModelCard
    classes = _write(tmp_path, "classes.txt", NAMES5)
    spec = load_keypoint_spec(classes, sigmas_path=_write(tmp_path, "s.txt", GOOD5))
    meta = json.loads(ModelCard(keypoints=spec, input_size=(64, 64)).to_json())
    assert meta["oks_sigmas"]["left_ear"] == 0.035
    assert KeypointSpec.from_dict(meta, "metadata").oks_sigmas == spec.oks_sigmas
    assert ModelCard.from_dict(meta, "metadata").keypoints.oks_sigmas == spec.oks_sigmas
    bare = ModelCard(keypoints=load_keypoint_spec(classes), input_size=(64, 64))
    assert bare.to_dict()["oks_sigmas"] is None


def _args(**kw):
    base = dict(classes_path=None, matchpoint_path=None, skeleton_path=None, sigmas_path=None)
    return argparse.Namespace(**{**base, **kw})


def test_run_py_sigmas_flag_and_records_sigmas(tmp_path):
    from model.cli import UsageError, resolve_spec
    classes = _write(tmp_path, "classes.txt", NAMES5)
    with_sigmas = load_keypoint_spec(classes, sigmas_path=_write(tmp_path, "s.txt", GOOD5))
    info = dict(with_sigmas.to_dict(), counts={"val": 1})
    assert resolve_spec(_args(), info) == with_sigmas                  # the records' own
    assert resolve_spec(_args(classes_path=classes), info) == with_sigmas
    other = _write(tmp_path, "o.txt", GOOD5.replace("0.026", "0.05"))
    assert resolve_spec(_args(sigmas_path=other), info).oks_sigmas[0] == 0.05
    bare = dict(load_keypoint_spec(classes).to_dict(), counts={"val": 1})
    assert resolve_spec(_args(), bare).oks_sigmas is None
    bad = _write(tmp_path, "bad.txt", "nose,0\n")
    with pytest.raises(UsageError, match=f"{bad}:1:"):
        resolve_spec(_args(sigmas_path=bad), info)
    import run
    args = run.build_parser().parse_args(["eval", "--model_path", "m", "--tfrecords", "r",
                                          "--sigmas_path", "s.txt"])
    assert args.sigmas_path == "s.txt"
    for mode in (["train", "--tfrecords", "r"], ["predict", "--model_path", "m", "--input", "x"]):
        assert run.build_parser().parse_args(mode + ["--sigmas_path", "s"]).sigmas_path == "s"


# ----------------------------------------------------------------------------- OKS AP


def test_coco_ap_needs_sigmas():
    with pytest.raises(ValueError, match="sigma"):
        coco_keypoint_ap({"images": [], "annotations": [], "categories": []},
                         [{"image_id": 1, "category_id": 1, "keypoints": [0] * 51, "score": 1}], None)


@pytest.mark.parametrize("noise", [0.0, 2.0, 5.0])
def test_ap_from_records_equals_ap_from_the_coco_json(coco_paths, coco_examples, noise):
    """The ground truth built from the records scores like pycocotools on the official json:
    the truth fed back gives AP 1, a perturbed prediction the same AP to 1e-6."""
    import tensorflow as tf

    from model.evaluation import coco_ground_truth, ground_truth_annotation
    from pipeline import decoder
    spec = builtin_spec("coco")
    truth = []
    for example in coco_examples:
        d = decoder.decode(tf.constant(example), image=False)
        truth.append(ground_truth_annotation(int(d["source_id"].numpy()), d["keypoints"].numpy(),
                                             d["visibility"].numpy(), d["area"].numpy(), d["bbox"].numpy()))
    rng = np.random.default_rng(int(noise))
    results = []
    for a in truth:
        kp = np.asarray(a["keypoints"]).reshape(-1, 3)
        xy = kp[:, :2] + rng.normal(0, noise, (17, 2)) * math.sqrt(a["area"]) / 100
        results.append(coco_result(a["image_id"], xy, rng.uniform(0.5, 1.0, 17)))
    official = coco_keypoint_ap(coco_paths[0], results, spec.oks_sigmas)
    ours = coco_keypoint_ap(coco_ground_truth(truth, spec), results, spec.oks_sigmas)
    for key in official:
        assert ours[key] == pytest.approx(official[key], abs=1e-6), key
    if noise == 0:
        assert ours["AP"] == 1.0 and ours["AR"] == 1.0
    else:
        assert 0.2 < ours["AP"] < 1.0


class OracleRunner:
    """A Runner whose heatmaps are the targets of the same eval parser, batch by batch: the
    whole evaluation chain (decode, inverse affine, ground truth) should then score ~1."""

    kind, card, decodes = "oracle", None, False

    def __init__(self, records, spec, input_size=(64, 64), stride=4):
        from model.trainer import split_pattern
        from pipeline.input_reader import InputReader
        from pipeline.parser import Parser, ParserConfig
        self.input_size, self.stride, self.num_keypoints = input_size, stride, spec.num_keypoints
        parser = Parser(ParserConfig(input_size=input_size, stride=stride), spec)
        reader = InputReader(file_pattern=split_pattern(records, "val"), parser=parser,
                             is_training=False, global_batch_size=4)
        self.queue = [labels["heatmaps"].numpy() for _, labels in reader(None)]
        self.all = list(self.queue)

    def again(self, spec):
        """A fresh runner with the same heatmaps (no second pass over the records)."""
        other = object.__new__(OracleRunner)
        other.__dict__.update(self.__dict__, queue=list(self.all), num_keypoints=spec.num_keypoints)
        return other

    def __call__(self, images):
        heatmaps = self.queue.pop(0)
        assert len(heatmaps) == len(images)
        return heatmaps


@pytest.fixture(scope="module")
def dlc_records(tmp_path_factory):
    """Ten real DeepLabCut frames (4 val) converted with a sigma file."""
    from pipeline.convert import ConvertOptions, convert_dataset
    csv_path = os.path.join(DLC_DIR, "CollectedData_Pranav.csv")
    if not os.path.isfile(csv_path):
        pytest.skip(f"shared DeepLabCut data not found at {csv_path}")
    root = tmp_path_factory.mktemp("dlc")
    lines = open(csv_path, encoding="utf-8").read().splitlines()
    (root / "c.csv").write_text("\n".join(lines[:13]) + "\n")
    (root / "val.txt").write_text("img0000.png\nimg0003.png\nimg0006.png\nimg0009.png\n")
    sigmas = root / "sigmas.txt"
    sigmas.write_text("snout,0.026\nleftear,0.035\nrightear,0.035\ntailbase,0.08\n")
    out = str(root / "records")
    info = convert_dataset("dlc", str(root / "c.csv"), os.path.join(DLC_DIR, "images"), out,
                           options=ConvertOptions(sigmas_path=str(sigmas), val_images=str(root / "val.txt"),
                                                  num_workers=1, quiet=True))
    return out, info, root


@pytest.mark.slow
def test_dlc_records_with_sigmas_get_ap_without_get_a_reason(dlc_records):
    from model.evaluation import evaluate_model
    out, info, root = dlc_records
    assert info["counts"] == {"train": 6, "val": 4}
    assert info["oks_sigmas"] == {"snout": 0.026, "leftear": 0.035, "rightear": 0.035, "tailbase": 0.08}
    assert open(os.path.join(out, "keypoints_sigmas.txt")).read().splitlines()[3] == "tailbase,0.08"
    spec = KeypointSpec.from_dict(info, "dataset_info.json")
    oracle = OracleRunner(out, spec)
    metrics = evaluate_model(oracle.again(spec), out, "val", spec, batch_size=4)
    assert metrics["examples"] == 4 and metrics["coco_ground_truth"] == "records"
    assert metrics["coco"]["AP"] == 1.0, metrics["coco"]
    assert "pck_torso_unavailable" in metrics and "pck_torso@0.2" not in metrics
    assert metrics["mean_error_px"] < 0.5
    bare = dataclasses.replace(spec, sigmas=None)
    assert bare.oks_sigmas is None
    metrics = evaluate_model(oracle.again(bare), out, "val", bare, batch_size=4)
    assert "coco" not in metrics and "--sigmas_path" in metrics["coco_unavailable"]


def test_records_with_sigmas_refuse_a_second_split_without(dlc_records):
    from pipeline.convert import ConversionError, ConvertOptions, convert_dataset
    out, info, root = dlc_records
    with pytest.raises(ConversionError, match="OKS sigmas"):
        convert_dataset("dlc", str(root / "c.csv"), os.path.join(DLC_DIR, "images"), out,
                        options=ConvertOptions(split="test", num_workers=1, quiet=True))
    assert json.load(open(os.path.join(out, "dataset_info.json")))["counts"] == {"train": 6, "val": 4}


def test_torso_pck_in_crop_pixels_equals_original_pixels_on_real_crops(coco_examples):
    """Validation scores torso PCK in crop pixels with the TF version; evaluation in original
    pixels with numpy: on real COCO crops (eval parser), with predictions moved back through
    the inverse crop affine, both count the same."""
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    from pipeline import decoder
    from pipeline.affine import invert_np, transform_points_np
    from pipeline.parser import Parser, ParserConfig
    spec = builtin_spec("coco")
    parser = Parser(ParserConfig(input_size=(128, 96)), spec)
    crop, orig, vis, pred_crop, pred_orig = [], [], [], [], []
    rng = np.random.default_rng(1)
    for example in coco_examples:
        _, labels = parser.parse_eval(decoder.decode(tf.constant(example)))
        kp = labels["keypoints"].numpy().astype(np.float64)
        noisy = kp + rng.normal(0, 4, kp.shape)
        crop.append(kp)
        pred_crop.append(noisy)
        vis.append(labels["visibility"].numpy())
        orig.append(labels["orig_keypoints"].numpy())
        pred_orig.append(transform_points_np(invert_np(labels["matrix"].numpy()), noisy))
    lab = np.stack(vis) > 0
    d = torso_diagonals(spec.names)
    ours = torso_pck_counts(np.stack(pred_orig), np.stack(orig).astype(np.float64), lab, d)
    tf_crop = torso_pck_counts(tf.constant(np.stack(pred_crop), tf.float32),
                               tf.constant(np.stack(crop), tf.float32), tf.constant(lab), d, xp=tnp)
    assert ours[2] >= 10 and ours[3] > 0         # persons scored, and some without a torso
    for x, y in zip(ours, tf_crop):
        np.testing.assert_allclose(np.asarray(y), x, atol=1.0)   # at most one boundary case
    assert abs(float(np.sum(ours[0])) - float(np.sum(tf_crop[0].numpy()))) <= 1
    assert np.all(ours[0][0] >= ours[0][1])      # 0.2 is looser than 0.1


@pytest.mark.slow
def test_validation_reports_torso_pck_like_evaluation(tmp_path, capsys):
    """Trainer.evaluate (TF, crop pixels, inside the distributed eval step) gives the torso PCK
    that model.evaluation gives for the same model (numpy, original pixels); one epoch writes
    the TensorBoard scalars and prints val_pck_torso@0.2. The run has a deadline already
    past: it ends after its first step (of 2 epochs x 3) as if its epoch ended there (one
    evaluation, a final model) and says so."""
    import tensorflow as tf

    from model.evaluation import evaluate_model
    from model.runner import KerasRunner
    from model.trainer import TrainConfig, Trainer
    from pipeline.convert import ConvertOptions, convert_dataset
    from pipeline.synthetic import generate_dataset
    generate_dataset(str(tmp_path / "raw"), num_train=8, num_val=24, image_size=(96, 96), seed=5)
    records = str(tmp_path / "records")
    for split in ("train", "val"):
        convert_dataset("coco", str(tmp_path / "raw" / "annotations" / f"person_keypoints_{split}.json"),
                        str(tmp_path / "raw" / "images" / split), records,
                        options=ConvertOptions(split=split, num_workers=1, quiet=True))
    spec = builtin_spec("coco")
    smoke = TrainConfig.smoke(records, str(tmp_path / "logs"), spec.num_keypoints)
    cfg = dataclasses.replace(smoke, model=dataclasses.replace(smoke.model, num_channels=32),
                              steps_per_epoch=3, total_epoch=2)
    trainer = Trainer(cfg, tf.distribute.get_strategy(), spec)
    summary = trainer.train(deadline=time.time())
    printed = capsys.readouterr().out
    assert "val_pck_torso@0.2 " in printed, printed
    assert summary["steps"] == 1 and summary["deadline"] and "deadline: ended at step 1 of 6" in printed
    assert os.path.isfile(summary["final_model"])
    assert open(tmp_path / "logs" / "val.txt").read().count("Epoch 1:") == 1
    result = trainer.evaluate()
    metrics = evaluate_model(KerasRunner(None, model=trainer.model), records, "val", spec,
                             batch_size=8)
    for key in ("pck_torso@0.2", "pck_torso@0.1"):
        assert result[key] is not None
        assert result[key] == pytest.approx(metrics[key], abs=1e-6)   # float32 crop vs float64
    assert result["pck_torso_examples_scored"] == metrics["pck_torso_examples_scored"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "logs" / "validation"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"pck_torso@0.2", "pck_torso@0.1"} <= set(events.Tags()["tensors"])
