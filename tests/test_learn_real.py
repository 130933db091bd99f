"""Smoke test of benchmarks/learn_real.py on the real open-field frames: the held-out split,
the mean-position baseline, the time plan, and a few-step train + evaluate run that prints
the benchmark's greppable lines."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import learn_real  # noqa: E402
from tests import benchmark_smoke  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLC = os.path.join(REPO, "..", "shared", "data", "dlc_openfield")
CSV = os.path.join(DLC, "CollectedData_Pranav.csv")

pytestmark = [pytest.mark.skipif(not os.path.isfile(CSV), reason=f"shared data not found: {CSV}"),
              pytest.mark.slow]          # trains a model for 3 steps (~30 s on 2 cores)

GREPPABLE = ("baseline_mean_error_px", "heldout_mean_error_px", "heldout_median_error_px",
             "heldout_pck", "train_seconds")


def csv_points() -> dict:
    """basename -> [4, 2] DLC pixel indices, read with the csv module."""
    with open(CSV, newline="") as f:
        rows = list(csv.reader(f))[3:]
    return {os.path.basename(r[0]): np.asarray([float(v) for v in r[1:]]).reshape(4, 2) for r in rows}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(stdout, out folder) of the benchmark with a 3-step, 32x32 one-stack model."""
    out = str(tmp_path_factory.mktemp("learn_real"))
    return benchmark_smoke.smoke_run(learn_real.main, out), out


def greppable(stdout: str) -> dict:
    return benchmark_smoke.greppable(stdout, GREPPABLE)


def test_conversion_holds_out_img0090_to_img0115(smoke_run):
    _, out = smoke_run
    records = os.path.join(out, "records")
    with open(os.path.join(records, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["counts"] == {"train": 90, "val": 26}
    assert info["flip_pairs"] == [["leftear", "rightear", "h"]]
    train = learn_real.read_split(records, "train", 4)
    val = learn_real.read_split(records, "val", 4)
    assert sorted(val.filenames) == [f"img{i:04d}.png" for i in range(90, 116)]
    assert sorted(train.filenames) == [f"img{i:04d}.png" for i in range(90)]
    assert not set(train.filenames) & set(val.filenames)
    points = csv_points()
    for split in (train, val):                      # labels travel with their frames
        for name, xy in zip(split.filenames, split.keypoints):
            assert np.allclose(xy, points[name] + 0.5, atol=1e-4)
    with open(os.path.join(out, "held_out.txt")) as f:
        assert f.read().split() == learn_real.held_out_names()


def test_baseline_is_the_mean_training_position(smoke_run):
    points = csv_points()
    train = np.stack([points[f"img{i:04d}.png"] for i in range(90)])
    val = np.stack([points[f"img{i:04d}.png"] for i in range(90, 116)])
    expected = np.linalg.norm(val - train.mean(axis=0), axis=-1).mean()   # ~128 px
    stdout, _ = smoke_run
    assert greppable(stdout)["baseline_mean_error_px"] == pytest.approx(expected, abs=0.01)
    assert 100.0 < expected < 160.0


def test_few_steps_print_the_greppable_lines(smoke_run):
    stdout, out = smoke_run
    values = greppable(stdout)
    assert set(values) == set(GREPPABLE), stdout[-2000:]
    assert stdout.rstrip().splitlines()[-1].startswith("train_seconds: ")
    assert 0.0 < values["heldout_median_error_px"] and 0.0 < values["heldout_mean_error_px"] < 800.0
    assert 0.0 <= values["heldout_pck"] <= 1.0 and values["train_seconds"] > 0.0
    with open(os.path.join(out, "learn_real.json")) as f:
        result = json.load(f)
    assert result["training"]["steps"] == 3
    assert result["heldout"]["examples"] == 26 and result["heldout"]["num_keypoints_scored"] == 104
    assert result["heldout"]["mean_error_px"] == pytest.approx(values["heldout_mean_error_px"], abs=0.01)
    assert sorted(result["held_out_frames"]) == learn_real.held_out_names()


def test_plan_fits_the_rest_of_the_budget():
    warm = learn_real.RunTiming(total_s=60.0, loops=[(10, 30.0), (10, 5.0), (10, 5.0)], evals=[4.0])
    assert warm.steady_rate() == pytest.approx(2.0)
    assert warm.overhead_s() == pytest.approx(60.0 - 15.0 - 4.0)
    spe = learn_real.plan_steps(budget_s=600.0, spent_s=70.0, warmup=warm, num_epochs=5)
    # 600 - 70 - 41 overhead - 5 x 4 s evaluations = 469 s at 2 steps/s x PLAN_SAFETY
    assert spe == int(469 * 2 * learn_real.PLAN_SAFETY) // 5
    assert learn_real.plan_steps(budget_s=60.0, spent_s=70.0, warmup=warm, num_epochs=5) == 1


def test_plan_counts_the_first_evaluation_once_and_later_ones_per_epoch():
    """The first evaluation builds and traces; the plan does not charge every epoch for it."""
    warm = learn_real.RunTiming(total_s=70.0, loops=[(10, 30.0), (10, 5.0), (10, 5.0)],
                                evals=[12.0, 2.0])
    assert (warm.first_eval_s(), warm.later_eval_s()) == (12.0, 2.0)
    assert warm.overhead_s() == pytest.approx(70.0 - 15.0 - 14.0)
    spe = learn_real.plan_steps(budget_s=600.0, spent_s=70.0, warmup=warm, num_epochs=10)
    # 600 - 70 - 41 overhead - 12 s - 9 x 2 s = 459 s at 2 steps/s x PLAN_SAFETY
    assert spe == int(459 * 2 * learn_real.PLAN_SAFETY) // 10
    assert learn_real.RunTiming(total_s=1.0, loops=[(1, 1.0)]).later_eval_s() == 0.0
