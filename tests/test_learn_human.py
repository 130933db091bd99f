"""Smoke test of benchmarks/learn_human.py on the real LSPET photos: the held-out split, no
image past im04000, the mean-pose baseline, and a few-step run that trains, evaluates,
exports int8 and prints the benchmark's greppable lines."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import learn_human, learn_real  # noqa: E402
from tests import benchmark_smoke  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LSPET = os.path.join(REPO, "..", "shared", "data", "lspet")

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(LSPET, "joints.mat")),
                                reason=f"shared data not found: {LSPET}")

GREPPABLE = ("baseline_pck_torso@0.2", "heldout_pck_torso@0.2", "heldout_pck_torso@0.1",
             "heldout_mean_error_px", "int8_pck_torso@0.2", "train_seconds")


def test_images_past_im04000_are_never_linked(tmp_path):
    data = tmp_path / "lspet"
    (data / "images").mkdir(parents=True)
    for i in (1, 2, 4000, 4001, 9999):
        (data / "images" / f"im{i:05d}.jpg").write_bytes(b"x")
    folder, linked = learn_human.link_images(str(data), str(tmp_path / "out"))
    assert linked == 3
    assert sorted(os.listdir(folder)) == ["im00001.jpg", "im00002.jpg", "im04000.jpg"]


def test_mean_pose_baseline_is_placed_in_each_box():
    box = np.array([[10.0, 20.0, 40.0, 80.0], [0.0, 0.0, 100.0, 50.0]])     # centres, sides 80 / 100
    rel = np.array([[-0.25, -0.5], [0.25, 0.5]])                          # two keypoints
    train_kp = (box[:, None, :2] + box[:, None, 2:] / 2) + rel[None] * box[:, 2:].max(1)[:, None, None]
    train = learn_real.SplitLabels(["a", "b"], [1, 2], train_kp, np.full((2, 2), 2), box)
    held = learn_real.SplitLabels(["c"], [3], np.zeros((1, 2, 2)), np.full((1, 2), 2),
                                  np.array([[100.0, 100.0, 20.0, 60.0]]))
    pred = learn_human.mean_pose_baseline(train, held)
    np.testing.assert_allclose(pred[0], np.array([110.0, 130.0]) + rel * 60.0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(stdout, out folder) of the benchmark with a 3-step, 32x32 one-stack model."""
    out = str(tmp_path_factory.mktemp("learn_human"))
    return benchmark_smoke.smoke_run(learn_human.main, out), out


def greppable(stdout: str) -> dict:
    return benchmark_smoke.greppable(stdout, GREPPABLE)


@pytest.mark.slow
def test_split_baseline_and_greppable_lines(smoke_run):
    stdout, out = smoke_run
    records = os.path.join(out, "records")
    with open(os.path.join(records, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["counts"] == {"train": 3500, "val": 500}
    held = learn_real.read_split(records, "val", 14)
    train = learn_real.read_split(records, "train", 14)
    assert sorted(held.filenames) == [f"im{i:05d}.jpg" for i in range(3501, 4001)]
    assert max(train.filenames) == "im03500.jpg" and not set(train.filenames) & set(held.filenames)

    values = greppable(stdout)
    assert set(values) == set(GREPPABLE), stdout[-2000:]
    assert stdout.rstrip().splitlines()[-1].startswith("train_seconds: ")
    # The baseline is worse than chance-free localization and independent of the model.
    assert 0.0 < values["baseline_pck_torso@0.2"] < 0.3
    for key in ("heldout_pck_torso@0.2", "heldout_pck_torso@0.1", "int8_pck_torso@0.2"):
        assert 0.0 <= values[key] <= 1.0
    with open(os.path.join(out, "learn_human.json")) as f:
        result = json.load(f)
    assert result["training"]["steps"] == 3
    assert result["heldout"]["examples"] == 500
    assert result["heldout"]["pck_torso@0.2"] == pytest.approx(values["heldout_pck_torso@0.2"], abs=1e-4)
    assert os.path.isfile(os.path.join(out, "lsp_hourglass.keras"))
    assert os.path.isfile(os.path.join(out, "lsp_hourglass.json"))
    assert os.path.isfile(os.path.join(out, "lsp_hourglass_int8.tflite"))
