"""Oracle AP: targets rendered by the eval pipeline and decoded back lose almost nothing."""
from __future__ import annotations

import os

import pytest

from benchmarks import oracle_ap
from tests.conftest import DATA


def test_subpixel_oracle_ap_reaches_the_ceiling(coco_paths):
    """Every person of coco_val_mini, cropped from its box (padding 1.25), 256x256 input,
    64x64 heatmaps: DARK decoding scores within 0.005 AP of exact coordinates clamped to
    the crop window; plain argmax is visibly lower."""
    r = oracle_ap.oracle_ap(*coco_paths)
    assert r["num_persons"] == 40
    assert r["ceiling"] == pytest.approx(0.974, abs=0.002)
    assert r["subpixel"] >= r["ceiling"] - 0.005
    assert r["max_decode_error_px"] < 0.05            # crop px, keypoints inside the crop
    assert r["argmax"] < r["subpixel"] - 0.002
    assert r["quarter"] <= r["subpixel"] + 1e-9


def test_cli_prints_the_three_lines_for_any_coco_json(capsys):
    ann = os.path.join(DATA, "coco_val_mini", "annotations", "mmpose_test_coco.json")
    if not os.path.isfile(ann):
        pytest.skip(f"shared COCO data not found at {ann}")
    images = os.path.join(DATA, "coco_val_mini", "images")
    assert oracle_ap.main(["--annotations", ann, "--images", images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    values = dict(line.split(": ", 1) for line in lines if line.startswith("oracle_AP_"))
    assert lines[-1].startswith("oracle_AP_subpixel: ")
    assert {"oracle_AP_ceiling", "oracle_AP_argmax", "oracle_AP_subpixel"} <= set(values)
    assert float(values["oracle_AP_subpixel"]) >= float(values["oracle_AP_ceiling"]) - 0.005
