"""Integer exports: int8 is integer-only from its uint8 pixels on (every tensor of the file
walked), the rewritten stems compute what the depthwise stem computes, int16x8 has int16
activations and is closer to float than int8, mixed keeps the layers it lists in float and
stops within 0.5 PCK points of float, and ``export.verify`` reports per file integer-only and
GPU-delegate compatibility and fails a file whose card claims what the file is not.

The quickstart model (trained once per session, ``tests.trained_model``), its export folder
(``quickstart_exports``, int16x8 and mixed included) and that folder's verify report
(``quickstart_verify``).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(quickstart_exports):
    """(folder, manifest): the session's export folder, int16x8 and mixed included (100
    calibration crops, PCK selection on the next 200 train crops). Read only."""
    return quickstart_exports


def _path(folder, quantization, decoder=False):
    out, manifest = folder
    found = [v for v in manifest["variants"] if v["format"] == "tflite"
             and v["quantization"] == quantization and v["decoder"] == decoder]
    assert len(found) == 1, (quantization, decoder, manifest["variants"])
    return os.path.join(out, found[0]["path"])


def _tensors(path):
    """(every tensor's type name, the input tensor, the ops reading the input) of a file,
    read from the flatbuffer itself."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    with open(path, "rb") as f:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(f.read()))
    graph = model.subgraphs[0]
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    first = graph.inputs[0]
    readers = [ops[model.operatorCodes[op.opcodeIndex].builtinCode] for op in graph.operators
               if first in op.inputs]
    return [types[t.type] for t in graph.tensors], graph.tensors[first], readers


@pytest.fixture(scope="module")
def val(quickstart_run):
    """(val crops, float Keras heatmaps of them)."""
    from export.records import load_crops
    from export.verify import batched
    from model.card import read_card
    from model.runner import KerasRunner

    card, _ = read_card(quickstart_run.final_model)
    crops = load_crops(quickstart_run.records, "val", card.keypoints, card.input_size, 4, "box", 1.25)
    return crops, batched(KerasRunner(quickstart_run.final_model), crops.images)


# ----------------------------------------------------------------------------- int8


def test_int8_is_integer_only_from_its_uint8_pixels_on(folder):
    """Every tensor of the int8 heatmap file is an integer type: the uint8 input (scale 1,
    zero point 0: raw pixels) read by one integer QUANTIZE, int8 activations and weights,
    int32 biases and shapes; its card says integer-only; the decoder file is not."""
    from model.card import read_card

    path = _path(folder, "int8")
    types, image, readers = _tensors(path)
    assert set(types) == {"UINT8", "INT8", "INT32"}, sorted(set(types))
    assert types.count("UINT8") == 1 and types.count("INT8") > 100
    assert image.quantization.scale.tolist() == [1.0] and image.quantization.zeroPoint.tolist() == [0]
    assert readers == ["QUANTIZE"]
    card, _ = read_card(path)
    assert card.extra["integer_only"] is True and card.inputs[0]["scale"] == 1.0
    dec_types, _, _ = _tensors(_path(folder, "int8", decoder=True))
    assert "FLOAT32" in dec_types and read_card(_path(folder, "int8", True))[0].extra["integer_only"] is False


def test_raw_pixels_past_the_calibrated_range_are_read_as_pixels(quickstart_run, tmp_path):
    """Calibration crops darkened to at most 200: the converter would give the input a 200/255
    scale; the file still declares raw pixels (scale 1, zero point 0) and, fed a real crop as
    it is, gives the float model's heatmaps within int8 error."""
    import keras

    from export.convert import Calibration, convert_tflite
    from export.quantize import run_tflite, tflite_facts
    from export.records import load_crops
    from model import as_stack_list, build_hourglass
    from model.card import read_card

    keras.utils.set_random_seed(0)
    model = build_hourglass(17, num_stacks=1, num_channels=32, mobile=True, input_size=(64, 64))
    spec = read_card(quickstart_run.final_model)[0].keypoints
    crops = load_crops(quickstart_run.records, "train", spec, (64, 64), 4, "box", 1.25,
                       max_examples=24)
    dark = (crops.images[:16].astype(np.float32) * (200.0 / 255.0)).astype(np.uint8)
    data = convert_tflite(model, "int8", Calibration(dark))
    facts = tflite_facts(data)
    image = facts["input"]
    assert (image["dtype"], image["scale"], image["zero_point"]) == ("uint8", 1.0, 0)
    assert facts["integer_only"] and facts["first_ops"] == ["QUANTIZE"]
    test = crops.images[16:]
    want = np.asarray(as_stack_list(model(test.astype(np.float32)))[-1])
    got = run_tflite(data, test)[0]
    spread = float(want.max() - want.min())
    assert np.abs(got - want).mean() < 0.05 * spread, (np.abs(got - want).mean(), spread)


def test_rewritten_stems_compute_the_depthwise_stem(quickstart_run, val):
    """integer_graph writes the mobile stem (7x7 stride-2 depthwise, multiplier 8) as
    space_to_depth + a 4x4 convolution (int8's), or as a dense 7x7 convolution with a
    block-diagonal kernel: each layer gives the trained layer's outputs, the graphs the float
    model's heatmaps; no other layer is touched."""
    import keras

    from export.convert import integer_graph, load_source

    model, _ = load_source(quickstart_run.final_model)
    depthwise = model.get_layer("stem_conv_dwconv")
    assert isinstance(depthwise, keras.layers.DepthwiseConv2D) and depthwise.depth_multiplier == 8
    x = np.random.default_rng(0).uniform(-1, 1, (2, *depthwise.input.shape[1:])).astype(np.float32)
    want = np.asarray(depthwise(x))
    crops, reference = val
    for stem, kind in (("space_to_depth", "SpaceToDepthConv"), ("dense", "Conv2D")):
        graph = integer_graph(model, batch_size=None, stem=stem)
        layer = graph.get_layer("stem_conv_dwconv")
        assert type(layer).__name__ == kind
        np.testing.assert_allclose(np.asarray(layer(x)), want, atol=1e-5)
        shared = [a for a in graph.layers if a is not layer and not isinstance(a, keras.layers.InputLayer)]
        assert {id(a) for a in shared} == {id(b) for b in model.layers if b is not depthwise
                                           and not isinstance(b, keras.layers.InputLayer)}
        got = np.asarray(graph(crops.images[:32].astype(np.float32)))
        np.testing.assert_allclose(got, reference[:32], atol=1e-4)
    dense = integer_graph(model, stem="dense").get_layer("stem_conv_dwconv").get_weights()[0]
    for c in range(3):   # block-diagonal: output channel 8c + j reads input channel c only
        assert not np.delete(dense[:, :, c, :], np.s_[8 * c:8 * c + 8], axis=-1).any()


# ----------------------------------------------------------------------------- int16x8, mixed


def test_int16x8_has_int16_activations_and_is_closer_to_float_than_int8(folder, val):
    from export.verify import batched
    from model.card import read_card
    from model.runner import load_runner

    path = _path(folder, "int16x8")
    types, image, readers = _tensors(path)
    assert set(types) <= {"INT16", "INT8", "INT32", "INT64"} and types.count("INT16") > 100
    assert image.quantization.scale.tolist() == [1.0] and image.quantization.zeroPoint.tolist() == [0]
    assert readers == ["MUL"]    # the normalization reads the int16 pixels directly
    card, _ = read_card(path)
    assert card.extra["integer_only"] is True and card.inputs[0]["dtype"] == "int16"
    crops, reference = val
    diff16 = np.abs(batched(load_runner(path), crops.images) - reference).mean()
    diff8 = np.abs(batched(load_runner(_path(folder, "int8")), crops.images) - reference).mean()
    assert diff16 < 0.5 * diff8, (diff16, diff8)


def test_mixed_stops_within_half_a_pck_point_and_lists_what_it_kept(folder):
    """The card records every count of float layers tried (0, 1, 2, 4, ...) with its PCK on
    the selection crops; the last is the first within 0.5 points of float; the file is
    integer-only exactly when no layer was kept."""
    from export.quantize import MIXED_MAX_PCK_DROP, tflite_facts
    from model.card import read_card

    path = _path(folder, "mixed")
    card, _ = read_card(path)
    mixed, kept = card.extra["mixed"], card.extra["float_layers"]
    counts = [t["float_layers"] for t in mixed["tried"]]
    n = mixed["ranked_layers"]
    schedule = list(dict.fromkeys([0] + [2 ** i for i in range(n.bit_length()) if 2 ** i < n] + [n]))
    assert counts == schedule[:len(counts)], (counts, n)
    assert all(mixed["float_pck"] - t["pck"] > MIXED_MAX_PCK_DROP for t in mixed["tried"][:-1])
    assert mixed["float_pck"] - mixed["tried"][-1]["pck"] <= MIXED_MAX_PCK_DROP
    assert len(kept) == counts[-1] and mixed["selection_examples"] == 200
    assert card.extra["calibration"]["selection_overlaps_calibration"] is False
    with open(path, "rb") as f:
        facts = tflite_facts(f.read())
    assert facts["integer_only"] == (not kept) == card.extra["integer_only"]


def test_layers_kept_in_float_run_in_float(quickstart_run):
    """Two layers kept (the debugger's worst two): the file has float activations and
    DEQUANTIZE ops around them, every other op in int8, and the card names them."""
    from export.convert import Calibration, convert_mixed, load_source
    from export.quantize import tflite_facts
    from export.records import load_crops

    model, card = load_source(quickstart_run.final_model)
    crops = load_crops(quickstart_run.records, "train", card.keypoints, card.input_size, 4, "box",
                       1.25, max_examples=16)
    data, report = convert_mixed(model, Calibration(crops.images), None, keep=2, log=lambda _: None)
    facts = tflite_facts(data)
    assert not facts["integer_only"] and facts["ops"].get("DEQUANTIZE", 0) >= 1
    assert facts["activation_types"].get("FLOAT32", 0) >= 2
    assert facts["activation_types"]["INT8"] > 50
    assert len(report["float_layers"]) == 2
    errors = [r["rmse_per_step"] for r in report["float_layers"]]
    assert errors == sorted(errors, reverse=True) and all(r["layer"] for r in report["float_layers"])


# ----------------------------------------------------------------------------- verify


@pytest.fixture(scope="module")
def report(quickstart_verify):
    """``python -m export.verify`` of the session's export folder (once per session)."""
    return quickstart_verify


def test_verify_reports_integer_only_and_gpu_compatibility_per_file(report):
    rows = {r["name"]: r for r in report["rows"]}
    expected = {"final_float32.tflite": False, "final_float16.tflite": False,
                "final_dynamic.tflite": False, "final_int8.tflite": True,
                "final_int16x8.tflite": True, "final_int8_decoder.tflite": False}
    for name, integer in expected.items():
        assert rows[name]["integer_only"] is integer, name
        assert rows[name]["problems"] == [], (name, rows[name]["problems"])
    assert rows["final_int8.tflite"]["gpu_compatible"] is True
    assert all(isinstance(r["gpu_compatible"], bool) for r in report["rows"] if r["format"] == "tflite")
    assert report["failed"] == []
    for r in report["rows"]:
        assert r["px_vs_float"] >= 0 and "mean_error_px" in r and set(r["latency_ms"])
    assert rows["final_int8.tflite"]["px_vs_float"] < 2.0


def test_verify_fails_a_file_whose_card_claims_what_it_is_not(folder, quickstart_run, tmp_path, capsys):
    """The float32 file carrying the int8 file's card: verify marks it FAIL, says why and
    exits 1."""
    from export.verify import main
    from model.card import embed_in_tflite, read_card

    out = tmp_path / "forged"
    out.mkdir()
    claim, _ = read_card(_path(folder, "int8"))
    with open(_path(folder, "float32"), "rb") as f:
        (out / "final_int8.tflite").write_bytes(embed_in_tflite(f.read(), claim))
    manifest = {"source_model": os.path.abspath(quickstart_run.final_model),
                "variants": [{"name": "final_int8.tflite", "path": "final_int8.tflite",
                              "format": "tflite", "quantization": "int8", "decoder": False}]}
    (out / "export_manifest.json").write_text(json.dumps(manifest))
    assert main(["--models", str(out), "--tfrecords", quickstart_run.records, "--max_examples", "16",
                 "--diff_examples", "16", "--latency_runs", "1", "--rounds", "1"]) == 1
    captured = capsys.readouterr()
    assert "final_int8.tflite" in captured.err and "integer_only" in captured.out
    with open(out / "verify.json", encoding="utf-8") as f:
        row = json.load(f)["rows"][1]
    assert row["integer_only"] is False and len(row["problems"]) >= 2
