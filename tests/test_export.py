"""Export: every variant converts and runs, carries its model card, matches the float Keras
model within measured tolerances, int8 takes uint8 pixels, the int8 file of the 160-channel
model is <= 0.3x the float32 file, and on the quickstart model (trained once per session by
the real trainer, ``tests.trained_model``) int8 PCK is within 0.01 of the float model's.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# |heatmap - Keras heatmap| (heatmap peaks ~0.9), measured on a 160-channel plain model over
# 120 val crops: max / mean = float32 4e-6 / 3e-7, float16 0.0017 / 0.00024, dynamic 0.039 /
# 0.0046, int8 0.09 / 0.0135 (int8 max up to 0.21 with only 20 calibration crops). The
# tolerances leave 2-3x margin over those figures; the quickstart model stays within them.
MAX_DIFF = {"saved_model": 1e-4, "float32": 1e-4, "float16": 5e-3, "dynamic": 0.1, "int8": 0.25}
MEAN_DIFF = {"saved_model": 1e-5, "float32": 1e-5, "float16": 1e-3, "dynamic": 0.012, "int8": 0.03}


@pytest.fixture(scope="module")
def trained(quickstart_run):
    """(model path, records folder, spec, input size) of the session's quickstart model."""
    from model.card import read_card

    card, _ = read_card(quickstart_run.final_model)
    return quickstart_run.final_model, quickstart_run.records, card.keypoints, tuple(card.input_size)


@pytest.fixture(scope="module")
def exported(quickstart_exports):
    """Every variant written by the CLI into one folder (heatmap models, then decoder models)."""
    return quickstart_exports


@pytest.fixture(scope="module")
def val_crops(trained):
    from export.records import load_crops

    _, records, spec, input_size = trained
    return load_crops(records, "val", spec, input_size, 4, "box", 1.25)


@pytest.fixture(scope="module")
def reference(trained, val_crops):
    """The float Keras model's heatmaps on the val crops."""
    from export.verify import batched
    from model.runner import KerasRunner

    return batched(KerasRunner(trained[0]), val_crops.images)


def _variant(manifest, quantization, decoder=False, fmt="tflite"):
    found = [v for v in manifest["variants"] if v["format"] == fmt and v["quantization"] == quantization
             and (v["decoder"] == decoder or fmt == "saved_model")]
    assert len(found) == 1, (fmt, quantization, decoder, manifest["variants"])
    return found[0]


# ----------------------------------------------------------------------------- CLI errors


def test_missing_or_wrong_model_path_is_a_clear_error(tmp_path, capsys):
    from export.__main__ import main

    missing = str(tmp_path / "no_such_model.keras")
    assert main(["--model_path", missing, "--output_dir", str(tmp_path / "out")]) == 2
    assert missing in capsys.readouterr().err
    not_keras = tmp_path / "weights.h5"
    not_keras.write_bytes(b"\x89HDF")
    assert main(["--model_path", str(not_keras), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(not_keras) in err and ".keras" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "int16x8"], "--representative"),
    (["--quantize", "mixed", "--num_selection", "0"], "--num_selection"),
    (["--full_pipeline"], "--frame_size"),
    (["--full_pipeline", "--frame_size", "640"], "HEIGHTxWIDTH"),
    (["--full_pipeline", "--frame_size", "0x640"], "HEIGHTxWIDTH"),
    (["--frame_size", "480x640"], "--full_pipeline"),
    (["--full_pipeline", "--frame_size", "480x640", "--format", "tflite", "saved_model"],
     "TFLite files only"),
    (["--full_pipeline", "--frame_size", "480x640", "--with_decoder"], "drop --with_decoder"),
])
def test_flag_mistakes_are_one_clear_message(extra, message, tmp_path, capsys):
    """A flag combination that cannot work: exit 2, one error line naming the flag, nothing
    written (checked before the model is even read)."""
    from export.__main__ import main

    model = tmp_path / "m.keras"
    model.write_bytes(b"PK")
    assert main(["--model_path", str(model), "--output_dir", str(tmp_path / "o")] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1, err
    assert not (tmp_path / "o").exists()


def test_int8_without_representative_records_is_refused(tmp_path, capsys):
    from export.__main__ import main

    model = tmp_path / "m.keras"
    model.write_bytes(b"PK")
    assert main(["--model_path", str(model), "--output_dir", str(tmp_path / "o"),
                 "--quantize", "int8"]) == 2
    assert "--representative" in capsys.readouterr().err
    assert main(["--model_path", str(model), "--output_dir", str(tmp_path / "o"), "--quantize",
                 "int8", "--representative", str(tmp_path)]) == 2
    assert "dataset_info.json" in capsys.readouterr().err


def test_verify_without_an_export_folder_is_a_clear_error(tmp_path, capsys):
    from export.verify import main

    assert main(["--models", str(tmp_path), "--tfrecords", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "export_manifest.json") in err and "python -m export" in err


# ----------------------------------------------------------------------------- variants


def test_every_variant_is_listed_with_its_card_inside_and_beside(exported, trained):
    from model.card import metadata_path, read_card

    out, manifest = exported
    names = sorted(v["name"] for v in manifest["variants"])
    assert names == sorted(["saved_model", "final_float32.tflite", "final_float16.tflite",
                            "final_dynamic.tflite", "final_int8.tflite", "final_int16x8.tflite",
                            "final_mixed.tflite", "final_float32_decoder.tflite",
                            "final_int8_decoder.tflite"])
    spec, input_size = trained[2], trained[3]
    for v in manifest["variants"]:
        path = os.path.join(out, v["path"])
        with open(metadata_path(path), encoding="utf-8") as f:
            meta = json.load(f)
        card, where = read_card(path)
        assert where == "inside" and card.to_dict() == meta, path
        assert card.architecture == {"num_stacks": 1, "num_channels": 128, "mobile": True}
        assert meta["keypoint_names"] == list(spec.names)
        assert meta["skeleton"] == spec.to_dict()["skeleton"]
        assert meta["flip_pairs"] == spec.to_dict()["flip_pairs"]
        assert meta["input_size"] == list(input_size) and meta["output_stride"] == 4
        assert meta["crop_mode"] == "box" and meta["quantization"] == v["quantization"]
        # raw pixels: uint8, or int16 for int16x8 (scale 1, zero point 0 either way)
        assert meta["inputs"][0]["dtype"] == ("int16" if v["quantization"] == "int16x8" else "uint8")
        assert all({"scale", "zero_point", "dtype"} <= set(t) for t in meta["inputs"] + meta["outputs"])
        if v["format"] == "tflite":   # one signature, its tensors named as the card's
            from ai_edge_litert.interpreter import Interpreter
            interpreter = Interpreter(model_path=path)
            outputs = ["confidence", "keypoints"] if v["decoder"] else ["heatmaps"]
            assert interpreter.get_signature_list() == {
                "serving_default": {"inputs": ["image"], "outputs": outputs}}, path
            assert [d["name"] for d in interpreter.get_output_details()] == outputs
            assert sorted(t["name"] for t in meta["outputs"]) == outputs


def test_int8_takes_uint8_pixels_and_gives_quantized_heatmaps(exported, trained):
    from ai_edge_litert.interpreter import Interpreter

    input_size = trained[3]
    out, manifest = exported
    path = os.path.join(out, _variant(manifest, "int8")["path"])
    interpreter = Interpreter(model_path=path)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, *input_size, 3]
    assert inp["quantization"] == (1.0, 0)  # raw pixels, read by an integer QUANTIZE
    assert outp["dtype"] == np.int8 and outp["quantization"][0] > 0
    assert list(outp["shape"]) == [1, input_size[0] // 4, input_size[1] // 4, 17]
    with open(path[:-len(".tflite")] + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["outputs"][0]["scale"] == pytest.approx(outp["quantization"][0])
    assert meta["outputs"][0]["zero_point"] == outp["quantization"][1]
    assert meta["calibration"]["split"] == "train" and meta["calibration"]["num_examples"] == 100
    # integer-only: no float tensor at all (tests/test_export_quant.py walks every tensor)
    floats = [list(t["shape"]) for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert floats == []
    int8 = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
    assert len(int8) > 50


@pytest.mark.parametrize("name", ["saved_model", "float32", "float16", "dynamic", "int8"])
def test_heatmaps_match_the_float_model(name, exported, val_crops, reference):
    from export.verify import batched
    from model.runner import load_runner

    out, manifest = exported
    variant = (_variant(manifest, "float32", fmt="saved_model") if name == "saved_model"
               else _variant(manifest, name))
    runner = load_runner(os.path.join(out, variant["path"]))
    heatmaps = batched(runner, val_crops.images)
    assert heatmaps.shape == reference.shape
    diff = np.abs(heatmaps - reference)
    assert diff.max() <= MAX_DIFF[name], (name, float(diff.max()))
    assert diff.mean() <= MEAN_DIFF[name], (name, float(diff.mean()))


def test_decoder_models_match_the_float_decoder(exported, trained, val_crops, reference):
    import tensorflow as tf

    from model.runner import load_runner
    from pipeline.codec import HeatmapCodec

    out, manifest = exported
    codec = HeatmapCodec(trained[3], 4)
    want_xy, want_conf = (np.asarray(t) for t in codec.decode(reference, refine="quarter"))
    xy, conf = load_runner(os.path.join(out, _variant(manifest, "float32", True)["path"])).keypoints(
        val_crops.images)
    assert xy.shape == want_xy.shape and conf.shape == want_conf.shape
    np.testing.assert_allclose(xy, want_xy, atol=1e-3)
    np.testing.assert_allclose(conf, want_conf, atol=1e-4)
    # int8 heatmaps may move an argmax to a neighbouring cell; labelled joints stay close
    xy8, conf8 = load_runner(os.path.join(out, _variant(manifest, "int8", True)["path"])).keypoints(
        val_crops.images)
    labelled = val_crops.weights > 0
    dist = np.linalg.norm(xy8 - want_xy, axis=-1)[labelled]
    assert np.mean(dist <= 4.0) >= 0.97, np.mean(dist <= 4.0)
    assert np.abs(conf8 - want_conf).max() < 0.2
    # the SavedModel's second signature is the same decoder
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    result = loaded.signatures["keypoints"](image=tf.constant(val_crops.images[:8]))
    np.testing.assert_allclose(result["keypoints"].numpy(), want_xy[:8], atol=1e-3)


# ----------------------------------------------------------------------------- verification


def test_models_scored_in_one_pass_score_as_each_alone(exported, trained, tmp_path):
    """evaluate_models (one read of the records for all): each model's metrics and COCO
    results are evaluate_model's for it alone; a scoring that crops otherwise (frame crop)
    gets a pass of its own and its own figures."""
    from model.evaluation import Scoring, evaluate_model, evaluate_models
    from model.runner import KerasRunner, load_runner

    out, manifest = exported
    model_path, records = trained[0], trained[1]
    keras_runner = KerasRunner(model_path)
    int8 = load_runner(os.path.join(out, _variant(manifest, "int8")["path"]))
    decoder = load_runner(os.path.join(out, _variant(manifest, "int8", True)["path"]))
    asked = [dict(runner=keras_runner), dict(runner=keras_runner, flip_test=True),
             dict(runner=int8, refine="quarter"), dict(runner=decoder),
             dict(runner=keras_runner, crop_mode="frame")]
    for i, a in enumerate(asked):
        a["result_json"] = str(tmp_path / f"together_{i}.json")
    together = evaluate_models([Scoring(**a) for a in asked], records, "val", batch_size=16,
                               max_examples=48)
    for i, (a, got) in enumerate(zip(asked, together)):
        alone = evaluate_model(**dict(a, result_json=str(tmp_path / f"alone_{i}.json")),
                               tfrecords=records, split="val", batch_size=16, max_examples=48)
        assert got["examples"] == alone["examples"] == 48
        for key in ("pck", "pck_torso@0.2", "mean_error_px", "refine", "flip_test", "crop_mode"):
            assert got[key] == alone[key], (i, key, got[key], alone[key])
        assert got["coco"]["AP"] == alone["coco"]["AP"]
        assert json.load(open(a["result_json"])) == json.load(open(tmp_path / f"alone_{i}.json"))
    errors = [m["mean_error_px"] for m in together]
    assert errors[1] != errors[0] and errors[4] != errors[0]          # other scorings, other figures
    assert together[4]["crop_mode"] == "frame"


@pytest.fixture(scope="module")
def report(quickstart_verify):
    """``python -m export.verify`` of the export folder on the val records (once per session)."""
    return quickstart_verify


def test_verify_runs_each_difference_crop_once():
    """export.verify.Remembered: a crop among the difference crops is run once, whatever the
    batches it comes in; the outputs are the runner's, in the order asked; other crops run."""
    from export.verify import Remembered

    class Counting:
        decodes, calls = False, []

        def __call__(self, images):
            self.calls.append(len(images))
            return images.mean(axis=(1, 2)).astype(np.float32)          # [B, 3]: one per crop

        def keypoints(self, images):
            self.calls.append(len(images))
            return images[:, :2, 0, :2].astype(np.float32), images[:, 0, 0, :].astype(np.float32)

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    runner = Counting()
    remembered = Remembered(runner, crops)
    first = np.concatenate([remembered(crops[:6]), remembered(crops[6:])])
    np.testing.assert_array_equal(first, runner(crops))
    runner.calls.clear()
    mixed = np.concatenate([crops[3:8], other])
    np.testing.assert_array_equal(remembered(mixed), runner(mixed))
    assert runner.calls == [3, 8]                        # only the three other crops ran
    runner.calls.clear()
    for got, want in zip(remembered.keypoints(mixed), runner.keypoints(mixed)):
        np.testing.assert_array_equal(got, want)
    assert runner.calls == [8, 8]                        # keypoints are kept apart from heatmaps
    assert remembered.decodes is False
    assert remembered(crops[:0]).shape == (0, 3)


def test_verify_reports_every_model(report, exported):
    _, manifest = exported
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"final.keras"} | {v["name"] for v in manifest["variants"]}
    assert report["examples"] == 100
    for r in report["rows"]:
        assert r["size_bytes"] > 0 and 0.0 < r["pck"] <= 1.0
        assert all(v > 0 for v in r["latency_ms"].values())
        if r["format"] == "tflite":
            assert set(r["latency_ms"]) == {"1t", "2t"}
    assert rows["final_float32.tflite"]["max_abs_diff"] <= MAX_DIFF["float32"]
    # the model learned something, so the accuracy comparison below means something
    assert rows["final.keras"]["pck"] > 0.5


def test_int8_is_as_accurate_as_float(report):
    rows = {r["name"]: r for r in report["rows"]}
    int8, f32 = rows["final_int8.tflite"], rows["final_float32.tflite"]
    assert abs(int8["pck"] - rows["final.keras"]["pck"]) <= 0.01, (int8["pck"], rows["final.keras"]["pck"])
    assert abs(f32["pck"] - rows["final.keras"]["pck"]) < 1e-9
    # decoder models are scored through their own keypoints, against the float model decoded alike
    dec = rows["final_float32_decoder.tflite"]
    assert dec["max_abs_diff"] < 1e-3 and abs(dec["pck"] - dec["float_pck"]) < 1e-9


def test_int8_file_is_at_most_0_3x_the_float32_file(trained, tmp_path):
    """File sizes do not depend on training: a 160-channel plain (not depthwise) 1-stack model,
    large enough that the weights, not the file's fixed per-tensor/per-channel bookkeeping,
    dominate (a 64- or 128-channel mobile model has a larger int8/float32 ratio, 0.47 / 0.30)."""
    import keras

    from export.convert import Calibration, convert_tflite
    from export.records import load_crops
    from model import build_hourglass

    _, records, spec, _ = trained
    keras.utils.set_random_seed(0)
    model = build_hourglass(spec.num_keypoints, num_stacks=1, num_channels=160, mobile=False,
                            input_size=(64, 64))
    crops = load_crops(records, "train", spec, (64, 64), 4, "box", 1.25, max_examples=20)
    f32 = len(convert_tflite(model, "none", None))
    int8 = len(convert_tflite(model, "int8", Calibration(crops.images)))
    assert int8 <= 0.3 * f32, int8 / f32


# ----------------------------------------------------------------------------- ONNX (optional)


def test_onnx_without_tf2onnx_is_a_clear_error(tmp_path, capsys):
    from export.__main__ import main
    from export.convert import onnx_available

    if onnx_available():
        pytest.skip("tf2onnx is installed here; test_onnx_matches_keras covers the export")
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK")
    assert main(["--model_path", str(model), "--output_dir", str(tmp_path / "o"), "--format", "onnx"]) == 2
    assert "tf2onnx" in capsys.readouterr().err


def test_onnx_matches_keras(trained, val_crops, reference, tmp_path):
    pytest.importorskip("tf2onnx", reason="ONNX export is an optional extra (pip install tf2onnx onnx)")
    pytest.importorskip("onnxruntime", reason="checking the ONNX file needs onnxruntime")
    from export.__main__ import main
    from model.runner import load_runner
    from pipeline.codec import HeatmapCodec

    model_path = trained[0]
    assert main(["--model_path", model_path, "--output_dir", str(tmp_path), "--format", "onnx"]) == 0
    runner = load_runner(str(tmp_path / "final_onnx.onnx"))
    np.testing.assert_allclose(runner(val_crops.images), reference, atol=1e-4)
    assert main(["--model_path", model_path, "--output_dir", str(tmp_path), "--format", "onnx",
                 "--with_decoder"]) == 0
    xy, _ = load_runner(str(tmp_path / "final_onnx_decoder.onnx")).keypoints(val_crops.images)
    want = np.asarray(HeatmapCodec(trained[3], 4).decode(reference, refine="quarter")[0])
    np.testing.assert_allclose(xy, want, atol=1e-3)
