"""LSP / LSPET joints.mat conversion on the real data (../shared/data/lspet): both layouts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from configs import builtin_spec  # noqa: E402
from pipeline.convert import ConversionError, ConvertOptions, convert_dataset, read_source  # noqa: E402
from pipeline.sources.lsp import load_joints  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LSPET = os.path.join(REPO, "..", "shared", "data", "lspet")
LSPET_MAT = os.path.join(LSPET, "joints.mat")
LSP_MAT = os.path.join(LSPET, "lsp_original_joints.mat")

pytestmark = pytest.mark.skipif(not os.path.isfile(LSPET_MAT), reason=f"shared data not found: {LSPET_MAT}")


def raw(path: str) -> np.ndarray:
    import scipy.io
    return np.asarray(scipy.io.loadmat(path)["joints"], np.float64)


def image_folder(tmp_path, names_from_to: dict) -> str:
    """A folder of links: {name in the folder: LSPET image it points to}."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, source in names_from_to.items():
        os.symlink(os.path.abspath(os.path.join(LSPET, "images", source)), folder / name)
    return str(folder)


def test_lspet_layout_reads_exactly(tmp_path):
    """(14, 3, N), flag 1 = visible: every visible joint is the file's value - 0.5 (1-based),
    every invisible one unlabelled; entry i is im{i+1:05d}.jpg."""
    joints = raw(LSPET_MAT)
    assert joints.shape == (14, 3, 10000)
    images = image_folder(tmp_path, {f"im{i:05d}.jpg": f"im{i:05d}.jpg" for i in range(1, 41)})
    source = read_source("lsp", LSPET_MAT, images, ConvertOptions(), builtin_spec("lsp"))
    records = source.records["train"]
    assert [r.filename for r in records] == [f"im{i:05d}.jpg" for i in range(1, 41)]
    for r in records:
        entry = joints[:, :, r.annotation_id]
        visible = (entry[:, 2] == 1) & np.all(entry[:, :2] > 0, axis=1)   # else junk
        np.testing.assert_array_equal(r.keypoints[:, 2], np.where(visible, 2.0, 0.0))
        np.testing.assert_allclose(r.keypoints[visible, :2], entry[visible, :2] - 0.5, atol=0, rtol=0)
        assert np.all(r.keypoints[~visible, :2] == 0)
        x0, y0, w, h = r.bbox
        pts = r.keypoints[visible, :2]
        eps = 1e-9
        assert x0 - eps <= pts[:, 0].min() and pts[:, 0].max() <= x0 + w + eps
        assert y0 - eps <= pts[:, 1].min() and pts[:, 1].max() <= y0 + h + eps
    assert not (joints[:, 2, 0] == 1).all()           # the first entry has an invisible joint
    assert records[0].keypoints[0, 2] == 0 and joints[0, 1, 0] < 0   # with junk coordinates
    assert any("LSPET layout" in n for n in source.notes)
    assert sum(s.reason == "missing_image" for s in source.skipped) == 10000 - 40


def test_lsp_layout_reads_exactly(tmp_path):
    """(3, 14, N), flag 0 = visible; images im0001.jpg... (4 digits)."""
    joints = raw(LSP_MAT)
    assert joints.shape == (3, 14, 2000)
    images = image_folder(tmp_path, {f"im{i:04d}.jpg": f"im{i:05d}.jpg" for i in range(1, 21)})
    source = read_source("lsp", LSP_MAT, images, ConvertOptions(), builtin_spec("lsp"))
    records = source.records["train"]
    assert [r.filename for r in records] == [f"im{i:04d}.jpg" for i in range(1, 21)]
    for r in records:
        entry = joints[:, :, r.annotation_id].T              # [14, 3]
        visible = entry[:, 2] == 0
        np.testing.assert_array_equal(r.keypoints[:, 2], np.where(visible, 2.0, 0.0))
        np.testing.assert_allclose(r.keypoints[visible, :2], entry[visible, :2] - 0.5, atol=0, rtol=0)
    assert (records[0].keypoints[:, 2] == 2).all()          # every flag of the first person is 0
    assert any("LSP layout" in n for n in source.notes)


def test_other_shapes_are_refused_with_the_expected_ones(tmp_path):
    import scipy.io
    bad = tmp_path / "joints.mat"
    scipy.io.savemat(bad, {"joints": np.zeros((14, 2, 5))})
    with pytest.raises(ConversionError, match=r"\(14, 2, 5\).*\(3, 14, N\).*\(14, 3, N\)"):
        load_joints(str(bad), 14)
    scipy.io.savemat(bad, {"points": np.zeros((14, 3, 5))})
    with pytest.raises(ConversionError, match="no 'joints' array"):
        load_joints(str(bad), 14)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ConversionError, match="not a readable MATLAB"):
        load_joints(str(garbage), 14)


def test_entry_without_a_visible_joint_is_skipped_and_counted(tmp_path):
    import scipy.io
    joints = raw(LSPET_MAT)[:, :, :3].copy()
    joints[:, 2, 1] = 0                                     # entry 2: nothing visible
    mat = tmp_path / "joints.mat"
    scipy.io.savemat(mat, {"joints": joints})
    images = image_folder(tmp_path, {f"im{i:05d}.jpg": f"im{i:05d}.jpg" for i in range(1, 4)})
    source = read_source("lsp", str(mat), images, ConvertOptions(), builtin_spec("lsp"))
    assert [r.filename for r in source.records["train"]] == ["im00001.jpg", "im00003.jpg"]
    assert [(s.file, s.reason) for s in source.skipped] == [("im00002.jpg", "no_labelled_keypoints")]


@pytest.mark.processes
def test_cli_converts_a_partial_folder_with_one_summary_line(tmp_path):
    """A folder holding 30 of the 10,000 images: 6 held out by --val_images, the rest train;
    the 9,970 missing entries are one line of the summary and counted in dataset_info.json."""
    images = image_folder(tmp_path, {f"im{i:05d}.jpg": f"im{i:05d}.jpg" for i in range(1, 31)})
    val = tmp_path / "held_out.txt"
    val.write_text("".join(f"im{i:05d}.jpg\n" for i in range(25, 31)))
    out = tmp_path / "records"
    proc = subprocess.run(
        [sys.executable, "convert_to_tfrecord.py", "--format", "lsp", "--annotations", LSPET_MAT,
         "--images", images, "--val_images", str(val), "--output", str(out), "--num_workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train 24 persons in 24 images, val 6 persons in 6 images, 14 keypoints" in proc.stdout
    assert proc.stdout.count("im0") <= 2, proc.stdout        # never one line per missing entry
    assert "9970 entries have no image file" in proc.stdout
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["skipped"]["train"] == {"missing_image": 9970}
    assert info["keypoint_names"] == list(builtin_spec("lsp").names)
    assert ["right_shoulder", "left_shoulder", "h"] in info["flip_pairs"]


@pytest.mark.processes
def test_cli_refuses_a_bad_shape_with_exit_2(tmp_path):
    import scipy.io
    mat = tmp_path / "joints.mat"
    scipy.io.savemat(mat, {"joints": np.zeros((3, 16, 4))})
    (tmp_path / "images").mkdir()
    proc = subprocess.run(
        [sys.executable, "convert_to_tfrecord.py", "--format", "lsp", "--annotations", str(mat),
         "--images", str(tmp_path / "images"), "--output", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert str(mat) in proc.stderr and "(3, 14, N)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_val_fraction_and_split_conflict(tmp_path):
    images = image_folder(tmp_path, {f"im{i:05d}.jpg": f"im{i:05d}.jpg" for i in range(1, 21)})
    source = read_source("lsp", LSPET_MAT, images, ConvertOptions(val_fraction=0.25, seed=3),
                         builtin_spec("lsp"))
    assert len(source.records["val"]) == 5 and len(source.records["train"]) == 15
    with pytest.raises(ConversionError, match="not both"):
        read_source("lsp", LSPET_MAT, images, ConvertOptions(val_fraction=0.25, split="val"),
                    builtin_spec("lsp"))


def test_written_records_hold_the_visible_joints(tmp_path):
    """End to end through the writer: the Example's pixel keypoints and visibility."""
    import tensorflow as tf

    from pipeline import schema
    images = image_folder(tmp_path, {f"im{i:05d}.jpg": f"im{i:05d}.jpg" for i in range(1, 6)})
    out = str(tmp_path / "records")
    info = convert_dataset("lsp", LSPET_MAT, images, out,
                           options=ConvertOptions(num_workers=1, quiet=True))
    assert info["counts"] == {"train": 5}
    joints = raw(LSPET_MAT)
    shard = os.path.join(out, info["splits"]["train"]["shards"][0])
    for record in tf.data.TFRecordDataset(shard):
        e = tf.train.Example.FromString(record.numpy()).features.feature
        index = int(e[schema.HG_ANNOTATION_ID].int64_list.value[0])
        visible = joints[:, 2, index] == 1
        np.testing.assert_array_equal(np.asarray(e[schema.KP_VISIBILITY].int64_list.value),
                                      np.where(visible, 2, 0))
        np.testing.assert_allclose(np.asarray(e[schema.HG_X].float_list.value)[visible],
                                   joints[visible, 0, index] - 0.5, atol=1e-4)
