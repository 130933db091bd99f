"""The synthetic quickstart dataset: COCO files pycocotools reads, exact keypoints, the
left/right rule of a figure facing the camera, determinism."""
from __future__ import annotations

import contextlib
import io
import json
import os

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO

from pipeline import synthetic
from pipeline.synthetic import KEYPOINT_NAMES, MARKER_COLOR, SyntheticConfig, generate_dataset, render_example

SIZE = (160, 192)  # (H, W): not square, so a swapped height/width shows up
# The official COCO person skeleton (1-based), written out independently of configs/.
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7],
                 [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5],
                 [4, 6], [5, 7]]
K = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
CLEAN = SyntheticConfig(occluder_prob=0.0, cut_prob=0.0)
HARD = SyntheticConfig(occluder_prob=0.6, cut_prob=0.6)


def _generate(out_dir, seed=0, num_train=10, num_val=4):
    return generate_dataset(str(out_dir), num_train=num_train, num_val=num_val, image_size=SIZE,
                            seed=seed, config=HARD)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, _generate(out)


def _load_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("split,count,first_id", [("train", 10, 1), ("val", 4, 11)])
def test_pycocotools_loads_split(dataset, split, count, first_id):
    out, summary = dataset
    coco = _load_coco(os.path.join(out, "annotations", f"person_keypoints_{split}.json"))
    assert sorted(coco.getImgIds()) == list(range(first_id, first_id + count))
    assert len(coco.getAnnIds()) == count
    cat = coco.loadCats([1])[0]
    assert cat["name"] == "person" and cat["keypoints"] == list(KEYPOINT_NAMES)
    assert sorted(cat["skeleton"]) == sorted(COCO_SKELETON)
    assert summary[split]["num_images"] == count
    for info in coco.loadImgs(coco.getImgIds()):
        image = cv2.imread(os.path.join(out, "images", split, info["file_name"]))
        assert image is not None and image.shape == (info["height"], info["width"], 3) == (*SIZE, 3)
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and len(ann["keypoints"]) == 51


def test_no_temporary_files_left(dataset):
    out, _ = dataset
    assert not [f for f in _all_files(out) if ".tmp" in f]


def test_annotations_consistent(dataset):
    """v=2 inside the image, v=0 at (0, 0), the box holds every labelled keypoint."""
    out, summary = dataset
    seen = np.zeros(3, int)
    for split in ("train", "val"):
        data = _read_json(os.path.join(out, "annotations", f"person_keypoints_{split}.json"))
        sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
        for ann in data["annotations"]:
            h, w = sizes[ann["image_id"]]
            kp = np.array(ann["keypoints"], float).reshape(17, 3)
            v = kp[:, 2].astype(int)
            seen += np.bincount(v, minlength=3)
            assert ann["num_keypoints"] == int((v > 0).sum())
            x, y, bw, bh = ann["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw > 0 and bh > 0
            assert 0 < ann["area"] <= bw * bh
            lab = kp[v > 0, :2]
            assert np.all((lab >= 0) & (lab < [w, h]))
            assert np.all((lab >= [x, y]) & (lab <= [x + bw, y + bh]))
            assert np.all(kp[v == 0, :2] == 0)
    assert all(seen > 0), f"all three visibilities should occur with this config, got {seen}"
    counts = {split: summary[split]["visibility_counts"] for split in ("train", "val")}
    assert sum(int(c[str(v)]) for c in counts.values() for v in range(3)) == seen.sum()
    assert [sum(int(c[str(v)]) for c in counts.values()) for v in range(3)] == seen.tolist()


def test_occluded_exactly_where_the_occluder_paints():
    """Same seed with and without the occluder: a labelled keypoint has v=1 exactly when
    the occluder painted the pixel that holds it."""
    hits = 0
    for seed in range(40):
        plain = render_example(np.random.default_rng(seed), SIZE, SyntheticConfig(occluder_prob=0.0))
        ex = render_example(np.random.default_rng(seed), SIZE, SyntheticConfig(occluder_prob=1.0))
        painted = np.any(plain.image != ex.image, axis=-1)
        assert ex.occluded == painted.any()
        labelled = ex.visibility > 0
        np.testing.assert_array_equal(ex.keypoints[labelled], plain.keypoints[labelled])
        cols, rows = np.floor(ex.keypoints[labelled]).astype(int).T
        np.testing.assert_array_equal(ex.visibility[labelled] == 1, painted[rows, cols])
        assert ex.area < plain.area or not ex.occluded
        hits += int((ex.visibility == 1).sum())
    assert hits >= 20


def _figure_axes(kp):
    """Unit 'up' (hips -> shoulders) and 'right' axes of a figure from its annotation."""
    mid_sh = (kp[K["left_shoulder"]] + kp[K["right_shoulder"]]) / 2
    mid_hip = (kp[K["left_hip"]] + kp[K["right_hip"]]) / 2
    up = (mid_sh - mid_hip) / np.linalg.norm(mid_sh - mid_hip)
    return up, np.array([-up[1], up[0]])  # image y points down: up=(0,-1) -> right=(1,0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_left_joints_on_image_right_of_figure(seed):
    """Facing the camera: in the figure's own frame each left keypoint of a pair lies to the
    image right of its right partner; the figure is upright within the rotation range."""
    ex = render_example(np.random.default_rng(seed), SIZE, CLEAN)
    kp = ex.keypoints
    assert np.all(ex.visibility == 2)
    up, right = _figure_axes(kp)
    tilt = np.degrees(np.arctan2(up[0], -up[1]))
    assert abs(tilt) < CLEAN.max_rotation_deg + 10  # plus the torso's own lean
    for part in ("shoulder", "hip", "eye", "ear"):
        gap = (kp[K[f"left_{part}"]] - kp[K[f"right_{part}"]]) @ right
        assert gap > 0, f"left_{part} is not on the image right of right_{part} (seed {seed})"
    assert (kp[K["nose"]] - (kp[K["left_hip"]] + kp[K["right_hip"]]) / 2) @ up > 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_figure_size_and_placement(seed):
    ex = render_example(np.random.default_rng(seed), SIZE, CLEAN)
    x, y, w, h = ex.bbox
    assert 0.35 <= max(w, h) / min(SIZE) <= 0.92
    assert x >= 0 and y >= 0 and x + w <= SIZE[1] and y + h <= SIZE[0]


def _marker_centroid(seed, index, config):
    """Alpha-weighted centroid (our pixel frame) of the debug marker at keypoint `index`."""
    base = render_example(np.random.default_rng(seed), SIZE, config)
    marked = render_example(np.random.default_rng(seed), SIZE, config, marker_index=index)
    a, b = base.image.astype(float), marked.image.astype(float)
    den = np.array(MARKER_COLOR, float) - a
    ch = np.argmax(np.abs(den), axis=-1)[..., None]
    den = np.take_along_axis(den, ch, -1)[..., 0]
    num = np.take_along_axis(b - a, ch, -1)[..., 0]
    alpha = np.where(np.abs(den) >= 40, np.clip(num / np.where(den == 0, 1, den), 0, 1), 0)
    assert alpha.sum() > 10, "the marker is not in the image"
    rows, cols = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    centroid = np.array([(alpha * (cols + 0.5)).sum(), (alpha * (rows + 0.5)).sum()]) / alpha.sum()
    return centroid, base


@pytest.mark.parametrize("seed", [0, 7])
def test_drawn_joint_positions_match_annotation(seed):
    """A marker drawn exactly where a joint is drawn has its centroid at the annotation."""
    for index in range(len(KEYPOINT_NAMES)):
        centroid, ex = _marker_centroid(seed, index, CLEAN)
        assert np.all(ex.visibility == 2)
        err = np.linalg.norm(centroid - ex.keypoints[index])
        assert err < 0.1, f"{KEYPOINT_NAMES[index]}: marker centroid {centroid} vs {ex.keypoints[index]}"
        assert np.all(np.mod(ex.keypoints[index] - 0.5, 1.0 / synthetic.SUBPIXEL) == 0)


def test_deterministic_bytes(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    _generate(again)
    files = _all_files(out)
    assert files == _all_files(again) and len(files) == 16
    for rel in files:
        assert _read_bytes(os.path.join(out, rel)) == _read_bytes(os.path.join(again, rel)), rel
    other = tmp_path / "other"
    _generate(other, seed=1)
    name = os.path.join("annotations", "person_keypoints_train.json")
    assert _read_bytes(os.path.join(other, name)) != _read_bytes(os.path.join(out, name))


def test_cli_writes_dataset(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--num_train", "3", "--num_val", "2",
                           "--height", "96", "--width", "128", "--seed", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["num_images"] == 3 and summary["val"]["num_images"] == 2
    coco = _load_coco(str(tmp_path / "annotations" / "person_keypoints_val.json"))
    assert [im["width"] for im in coco.loadImgs(coco.getImgIds())] == [128, 128]
    assert sorted(os.listdir(tmp_path / "images" / "train")) == [
        "train_000001.jpg", "train_000002.jpg", "train_000003.jpg"]


def test_bad_arguments_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        generate_dataset(str(tmp_path), num_train=-1)
    with pytest.raises(ValueError, match="too small"):
        generate_dataset(str(tmp_path), image_size=(16, 16))
