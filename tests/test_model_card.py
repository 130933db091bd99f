"""The model card travels inside every model file and every consumer builds its crop and codec
from it: eval keeps the crop mode and sigma a model was trained with, a model copied without
its json keeps its keypoints and architecture, models exported with their decoder evaluate
like their heatmap twins, and a flag that differs from the card is used with one notice.

The models here are untrained (the card, not the accuracy, is under test); the records are the
quickstart's synthetic set (``tests.trained_model.quickstart_records``).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

INPUT = (64, 64)


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    from configs import builtin_spec
    from model import build_hourglass

    keras.utils.set_random_seed(3)
    return build_hourglass(17, num_stacks=1, num_channels=32, mobile=True, input_size=INPUT), \
        builtin_spec("coco")


def _save(model, spec, path, **settings):
    from model.card import card_for_model, save_keras
    save_keras(model, str(path), card_for_model(model, spec, **settings))
    return str(path)


def _eval(capsys, model_path, records, out, *flags):
    import run
    metrics_json, result_json = os.path.join(out, "m.json"), os.path.join(out, "r.json")
    code = run.main(["eval", "--model_path", model_path, "--tfrecords", records, "--metrics_json",
                     metrics_json, "--result_json", result_json, "--batch_size", "32", *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with open(metrics_json) as f, open(result_json) as g:
        return json.load(f), np.array([r["keypoints"] for r in json.load(g)]), captured.err


def test_card_round_trips_and_carries_the_architecture(tiny_model, tmp_path):
    from model.card import ModelCard, read_card
    from model.hourglass import hourglass_config
    model, spec = tiny_model
    path = _save(model, spec, tmp_path / "m.keras", crop_mode="frame", padding=1.1, sigma=3.0)
    os.remove(tmp_path / "m.json")                       # the copy beside it is not needed
    card, where = read_card(path)
    assert where == "inside"
    arch = hourglass_config(model)
    assert card.architecture == {"num_stacks": arch.num_stacks, "num_channels": arch.num_channels,
                                 "mobile": arch.mobile} == {"num_stacks": 1, "num_channels": 32,
                                                            "mobile": True}
    assert (card.crop_mode, card.padding, card.sigma, card.input_size) == ("frame", 1.1, 3.0, INPUT)
    assert card.keypoints.to_dict() == spec.to_dict()
    assert ModelCard.from_dict(json.loads(card.to_json()), "copy") == card


def test_eval_uses_the_crop_mode_and_sigma_of_the_card(tiny_model, quickstart_records, tmp_path, capsys):
    """Bug: eval read crop_mode from dataset_info.json (never there) and rebuilt the codec
    with the default sigma; a model trained on frames was scored on box crops."""
    model, spec = tiny_model
    folder = tmp_path / "alone"
    folder.mkdir()
    path = _save(model, spec, folder / "m.keras", crop_mode="frame", sigma=3.0)
    os.remove(folder / "m.json")                         # a model copied alone
    records = quickstart_records.records
    m_card, xy_card, err = _eval(capsys, path, records, str(tmp_path))
    assert (m_card["crop_mode"], m_card["sigma"], m_card["model_card"]) == ("frame", 3.0, "inside")
    assert "note" not in err
    m_frame, xy_frame, err_same = _eval(capsys, path, records, str(tmp_path), "--crop_mode", "frame")
    np.testing.assert_array_equal(xy_card, xy_frame)
    assert "differs" not in err_same
    m_box, xy_box, err_box = _eval(capsys, path, records, str(tmp_path), "--crop_mode", "box")
    assert m_box["crop_mode"] == "box" and not np.allclose(xy_box, xy_card)
    assert err_box.count("differs from the crop_mode frame") == 1        # one notice, flag used

    # sigma: DARK blurs with the card's sigma; the same model carded with sigma 2 decodes otherwise
    two = _save(model, spec, tmp_path / "sigma2.keras", crop_mode="frame", sigma=2.0)
    m_two, xy_two, _ = _eval(capsys, two, records, str(tmp_path))
    assert m_two["sigma"] == 2.0 and not np.allclose(xy_two, xy_card)


def test_a_model_copied_alone_predicts_with_its_keypoint_names(tiny_model, quickstart_records,
                                                                 tmp_path, capsys):
    import run
    model, spec = tiny_model
    path = _save(model, spec, tmp_path / "m.keras")
    os.remove(tmp_path / "m.json")
    image = sorted(os.listdir(os.path.join(quickstart_records.synthetic, "images", "val")))[0]
    out = tmp_path / "drawn.jpg"
    code = run.main(["predict", "--model_path", path, "--input",
                     os.path.join(quickstart_records.synthetic, "images", "val", image),
                     "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.stat().st_size > 0


def test_old_model_with_json_beside_and_bare_model(tiny_model, quickstart_records, tmp_path, capsys):
    """Files written before cards were embedded are read through their json; a file with no
    card at all is evaluated with the records' keypoints and the training defaults, with a notice."""
    from model.card import metadata_path
    from model.runner import load_runner
    model, spec = tiny_model
    old = str(tmp_path / "old.keras")
    model.save(old)
    with open(metadata_path(old), "w") as f:
        json.dump({**spec.to_dict(), "input_size": list(INPUT), "output_stride": 4,
                   "crop_mode": "frame", "padding": 1.25}, f)
    runner = load_runner(old)
    assert runner.card_source == metadata_path(old) and runner.card.crop_mode == "frame"
    os.remove(metadata_path(old))
    metrics, _, err = _eval(capsys, old, quickstart_records.records, str(tmp_path))
    assert metrics["crop_mode"] == "box" and metrics["model_card"] == "none"
    assert err.count("carries no model card") == 1


@pytest.mark.slow
def test_exported_files_carry_the_card_and_decoder_models_evaluate(quickstart_run, quickstart_exports,
                                                                     tmp_path, capsys):
    """Bug: models exported --with_decoder output crop pixels nothing mapped back, and eval
    refused them. Now eval maps their keypoints back like any prediction: the same numbers as
    the heatmap model decoded the same way ('quarter'). Every file copied alone keeps its card."""
    from model.card import read_card
    from model.runner import load_runner
    source, _ = read_card(quickstart_run.final_model)
    out, _ = quickstart_exports
    heat, dec = os.path.join(out, "final_float32.tflite"), os.path.join(out, "final_float32_decoder.tflite")
    alone = tmp_path / "alone"
    alone.mkdir()
    for path in (heat, dec, os.path.join(out, "saved_model"), os.path.join(out, "final_int8.tflite")):
        copy = str(alone / os.path.basename(path))
        (shutil.copytree if os.path.isdir(path) else shutil.copyfile)(path, copy)
        runner = load_runner(copy)                        # no json beside the copy
        assert runner.card_source == "inside", copy
        card = runner.card
        for field in ("keypoints", "input_size", "output_stride", "num_stacks", "num_channels",
                      "mobile", "crop_mode", "padding", "sigma", "refine"):
            assert getattr(card, field) == getattr(source, field), (copy, field)
        assert card.format == ("saved_model" if "saved" in copy else "tflite")
    int8 = load_runner(str(alone / "final_int8.tflite")).card
    assert int8.quantization == "int8" and int8.outputs[0]["dtype"] == "int8" and int8.outputs[0]["scale"] > 0
    assert load_runner(dec).decodes and load_runner(dec).card.decoder == "quarter"
    assert load_runner(heat).card.outputs[0]["role"] == "heatmaps"
    records = quickstart_run.records
    m_dec, xy_dec, _ = _eval(capsys, str(alone / os.path.basename(dec)), records, str(tmp_path))
    m_heat, xy_heat, _ = _eval(capsys, str(alone / os.path.basename(heat)), records, str(tmp_path),
                               "--refine", "quarter")
    assert m_dec["decoder"] and m_dec["refine"] == "quarter" and m_heat["pck"] > 0.5
    np.testing.assert_allclose(xy_dec, xy_heat, atol=1e-3)
    assert m_dec["pck"] == pytest.approx(m_heat["pck"], abs=1e-9)
    m_flip, _, _ = _eval(capsys, str(alone / os.path.basename(dec)), records, str(tmp_path), "--flip_test")
    assert m_flip["flip_test"] and m_flip["examples"] == m_dec["examples"]
    assert m_flip["pck"] >= m_dec["pck"] - 0.02           # averaging the mirror's keypoints helps or holds
