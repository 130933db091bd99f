"""``python -m export --full_pipeline``: one TFLite file from a frame to keypoints in frame pixels.

The geometry (no model needed) is the evaluation crop, bit for bit: the box's matrix and the
sampled pixels against ``Parser.parse_eval`` on real COCO persons, in eager TF and inside a
converted TFLite file, for frames padded into a larger frame (eval's crop does not depend on
where an image ends). The session's quickstart model (``tests.trained_model``) exported as
float32 and int8 crop models and pipelines for 640x640 frames: builtin ops only, its card
inside says the geometry is float, the int8 file has an integer network and float geometry,
and each pipeline's keypoints agree with ``run.py eval``'s of the crop model of its
quantization on the quickstart val records and on real COCO val2017 persons with their
ground-truth boxes (frames of 320-640 px padded into 640x640); ``python -m export.verify``
scores the pipelines and fails one that misses. The README's device lines run the file.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FRAME = (640, 640)
# The pipeline samples eval's crop bit for bit (``record_box`` names a record's crop), so its
# keypoints are eval's up to the float32 decoding and inverse affine, for
# the int8 network as for the float one (before, the crops differed by one grey level on
# ~0.02% of values and int8 networks moved keypoints by a median of 1.07 px). Where a
# keypoint still moves, it is a heatmap near-tie decided by float32 decoding: 99% of
# keypoints within half a pixel of eval's, median under 0.01 px, the same AP.
from export.pipeline_model import WITHIN_HALF_PX  # noqa: E402

MEDIAN_PX = 0.01
AP_TOLERANCE = 0.01


def _export(argv):
    from export.__main__ import main
    return main(argv)


# ----------------------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def coco_tfrecords(coco_paths, tmp_path_factory):
    """coco_val_mini (40 persons with keypoints) converted by convert_to_tfrecord.py."""
    import convert_to_tfrecord

    out = str(tmp_path_factory.mktemp("coco_records"))
    assert convert_to_tfrecord.main(["--format", "coco", "--split", "val", "--annotations", coco_paths[0],
                                     "--images", coco_paths[1], "--output", out,
                                     "--num_workers", "1", "--quiet"]) in (0, None)
    return out


def _padded(frame: np.ndarray) -> np.ndarray:
    """``frame`` at the top-left of a black FRAME (as the app and ``PipelineRunner`` pad it)."""
    image = np.zeros((*FRAME, 3), np.uint8)
    image[:frame.shape[0], :frame.shape[1]] = frame
    return image


@pytest.mark.parametrize("input_size, crop_mode", [((128, 96), "box"), ((256, 192), "box"),
                                                   ((96, 96), "frame"), ((96, 128), "frame")])
def test_crop_is_the_evaluation_crop(coco_tfrecords, input_size, crop_mode):
    """On real COCO persons, frames padded into 640x640: the pipeline's matrix is eval's and
    its pixels are eval's, bit for bit (affine.crop_matrix's and resize_window's float64
    steps done in float32 pairs, crop_and_resize's float32 arithmetic repeated)."""
    import tensorflow as tf

    from configs import builtin_spec
    from export.pipeline_model import box_crop_matrix, frames_and_crops, record_box, sample_crop
    from model.card import ModelCard

    card = ModelCard(keypoints=builtin_spec("coco"), input_size=input_size, crop_mode=crop_mode)
    sample = tf.function(lambda image, box: sample_crop(image, box_crop_matrix(box, card), input_size),
                         autograph=False)
    count = 0
    for frame, crop, labels in frames_and_crops(coco_tfrecords, "val", card):
        frame = frame.numpy()
        box = (np.array([0.0, 0.0, frame.shape[1], frame.shape[0]], np.float32) if crop_mode == "frame"
               else record_box(labels["center"].numpy(), labels["scale"].numpy()))
        matrix = box_crop_matrix(tf.constant(box), card).numpy()
        np.testing.assert_array_equal(matrix, labels["matrix"].numpy())
        np.testing.assert_array_equal(sample(tf.constant(_padded(frame)), tf.constant(box)).numpy(),
                                      crop.numpy())
        count += 1
    assert count == 40


def test_eval_crop_does_not_depend_on_where_the_image_ends(coco_tfrecords):
    """The pixels past an image's bottom and right are eval's fill: the same image padded
    with black there gives the same crop, bit for bit, for crops that reach past it."""
    import tensorflow as tf

    from configs import builtin_spec
    from export.pipeline_model import frames_and_crops
    from model.card import ModelCard
    from pipeline import affine

    card = ModelCard(keypoints=builtin_spec("coco"), input_size=(256, 192), crop_mode="box")
    reaching = 0
    for frame, crop, labels in frames_and_crops(coco_tfrecords, "val", card):
        matrix = labels["matrix"]
        y0, x0, y1, x1 = affine.source_window(matrix, tf.shape(frame)[:2], card.input_size).numpy()
        _, end = affine._window_and_end(affine._sampling_params(matrix), tf.shape(frame)[:2],  # noqa: SLF001
                                        card.input_size, 1)
        reaching += bool(np.any(end.numpy() > [y1, x1]))
        padded = affine.to_uint8(affine.crop_float(tf.constant(_padded(frame.numpy())), matrix,
                                                   card.input_size))
        np.testing.assert_array_equal(padded.numpy(), crop.numpy())
    assert reaching >= 10, reaching


def test_crop_inside_the_tflite_file_is_the_evaluation_crop(coco_tfrecords):
    """The converted crop layer (the float32 ops TFLite keeps: divisions by constants would
    become products with rounded reciprocals) gives eval's pixels bit for bit."""
    import contextlib
    import io

    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from configs import builtin_spec
    from export.pipeline_model import _layers, frames_and_crops, record_box
    from model.card import ModelCard

    for input_size, crop_mode in (((128, 96), "box"), ((96, 128), "frame")):
        card = ModelCard(keypoints=builtin_spec("coco"), input_size=input_size, crop_mode=crop_mode)
        image = keras.Input(shape=(*FRAME, 3), batch_size=1, dtype="uint8", name="image")
        box = keras.Input(shape=(4,), batch_size=1, dtype="float32", name="box")
        crop, _ = _layers()[0](card, name="crop")(image, box)
        with contextlib.redirect_stdout(io.StringIO()):
            data = tf.lite.TFLiteConverter.from_keras_model(keras.Model([image, box], crop)).convert()
        run = Interpreter(model_content=data).get_signature_runner()
        differing = 0
        for frame, expected, labels in frames_and_crops(coco_tfrecords, "val", card):
            frame = frame.numpy()
            b = (np.array([0.0, 0.0, frame.shape[1], frame.shape[0]], np.float32) if crop_mode == "frame"
                 else record_box(labels["center"].numpy(), labels["scale"].numpy()))
            ours = next(iter(run(image=_padded(frame)[None], box=b[None]).values()))[0]
            differing += not np.array_equal(ours, expected.numpy())
        assert differing == 0, (input_size, differing)


def test_record_box_names_the_record_crop():
    """Any centre and scale: the float32 box of record_box gives the matrix of
    affine.crop_matrix, bit for bit (its corner is crop_matrix's; its centre is the exact one)."""
    import tensorflow as tf

    from configs import builtin_spec
    from export.pipeline_model import box_crop_matrix, record_box
    from model.card import ModelCard
    from pipeline import affine

    rng = np.random.default_rng(0)
    card = ModelCard(keypoints=builtin_spec("coco"), input_size=(128, 96), crop_mode="box")
    matrix = tf.function(lambda box: box_crop_matrix(box, card), autograph=False)
    centers = rng.uniform(-50, 700, (300, 2)).astype(np.float32)
    scales = np.exp(rng.uniform(np.log(0.02), np.log(8.0), 300)).astype(np.float32)
    for center, scale in zip(centers, scales):
        want = affine.crop_matrix(center, scale, card.padding, card.input_size).numpy()
        np.testing.assert_array_equal(matrix(tf.constant(record_box(center, scale))).numpy(), want)


def test_calibration_frames_hold_the_calibration_crops():
    """int8 calibration feeds each eval crop in a blank frame with the box whose crop it is:
    the pipeline samples it back pixel for pixel (so the network sees exactly those crops)."""
    import tensorflow as tf

    from configs import builtin_spec
    from export.convert import Calibration
    from export.pipeline_model import box_crop_matrix, calibration_frames, sample_crop
    from model.card import ModelCard

    rng = np.random.default_rng(0)
    for input_size, crop_mode in (((128, 96), "box"), ((96, 128), "box"), ((96, 96), "frame")):
        card = ModelCard(keypoints=builtin_spec("coco"), input_size=input_size, crop_mode=crop_mode)
        crops = rng.integers(0, 256, (2, *input_size, 3), dtype=np.uint8)
        for crop, (frame, box) in zip(crops, calibration_frames(Calibration(crops), card, (200, 240))()):
            frame, box = frame[0], box[0]
            matrix = box_crop_matrix(tf.constant(box), card)
            np.testing.assert_array_equal(sample_crop(frame, matrix, input_size).numpy(), crop)


# ----------------------------------------------------------------------------- exported files


@pytest.fixture(scope="module")
def pipelines(quickstart_exports, quickstart_run, tmp_path_factory):
    """(folder, manifest): the session's float32 and int8 crop models of the quickstart model
    (``quickstart_exports``, 100 calibration crops) copied with their manifest, then exported by
    the CLI into the same folder as float32 and int8 pipelines for 640x640 frames (100
    calibration crops too, so both int8 networks are calibrated alike). The manifest keeps only
    the copied crop models (a listed file that is absent is dropped)."""
    exports, _ = quickstart_exports
    out = str(tmp_path_factory.mktemp("pipelines"))
    for name in ("final_float32.tflite", "final_float32.json", "final_int8.tflite",
                 "final_int8.json", "export_manifest.json"):
        shutil.copy2(os.path.join(exports, name), os.path.join(out, name))
    assert _export(["--model_path", quickstart_run.final_model, "--output_dir", out, "--quantize",
                    "none", "int8", "--representative", quickstart_run.records,
                    "--num_calibration", "100", "--full_pipeline",
                    "--frame_size", f"{FRAME[0]}x{FRAME[1]}"]) == 0
    with open(os.path.join(out, "export_manifest.json"), encoding="utf-8") as f:
        return out, json.load(f)


def _path(pipelines, quantization, pipeline=True):
    out, manifest = pipelines
    listed = manifest["pipelines"] if pipeline else [v for v in manifest["variants"] if not v["decoder"]]
    found = [p for p in listed if p["quantization"] == quantization]
    assert len(found) == 1, listed
    return os.path.join(out, found[0]["path"])


def _agrees(result):
    """The bar of the issue: 99% of keypoints within half a pixel of run.py eval's, the median
    under MEDIAN_PX, the same AP."""
    assert result["over_half_px_fraction"] <= 1 - WITHIN_HALF_PX, result
    assert result["median_px"] < MEDIAN_PX, result
    assert abs(result["ap_pipeline"] - result["ap_reference"]) < AP_TOLERANCE, result


def test_files_have_frame_inputs_builtin_ops_and_their_card(pipelines):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    from export.pipeline_model import op_names
    from model.card import metadata_path, read_card

    out, manifest = pipelines
    assert sorted(p["name"] for p in manifest["pipelines"]) == ["final_float32_pipeline.tflite",
                                                                "final_int8_pipeline.tflite"]
    assert sorted(v["name"] for v in manifest["variants"]) == ["final_float32.tflite",
                                                               "final_int8.tflite"]
    for entry in manifest["pipelines"]:
        path = os.path.join(out, entry["path"])
        interpreter = Interpreter(model_path=path)
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        for tensor, shape, dtype in ((inputs["image"], [1, *FRAME, 3], np.uint8),
                                     (inputs["box"], [1, 4], np.float32),
                                     (outputs["keypoints"], [1, 17, 2], np.float32),
                                     (outputs["confidence"], [1, 17], np.float32)):
            assert list(tensor["shape"]) == shape and tensor["dtype"] == dtype, tensor
        with open(path, "rb") as f:
            ops = op_names(f.read())
        builtin = set(vars(schema.BuiltinOperator))
        assert set(ops) <= builtin and not any(o.startswith("Flex") for o in ops), ops
        assert {"GATHER", "CONV_2D", "ARG_MAX", "LOG"} <= set(ops)    # sampling, network, DARK
        card, where = read_card(path)
        with open(metadata_path(path), encoding="utf-8") as f:
            assert where == "inside" and card.to_dict() == json.load(f)
        assert card.quantization == entry["quantization"] and card.batch == 1
        assert card.extra["integer_only"] is False and "frame" in card.input_normalization
        pipeline = card.extra["pipeline"]
        assert pipeline["frame_size"] == list(FRAME) and pipeline["refine"] == "dark"
        assert pipeline["geometry"].startswith("float32")
        assert "only the network is quantized" in pipeline["geometry"]
        assert "frame pixels" in pipeline["keypoints"]
        assert {t["name"] for t in card.inputs} == {"image", "box"}


def test_int8_file_has_an_integer_network_and_float_geometry(pipelines):
    """Every CONV_2D is int8; one QUANTIZE (the crop into the network) and one DEQUANTIZE
    (its heatmaps out); the sampling, decoding and mapping ops touch no int8 tensor."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=_path(pipelines, "int8"),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    dtypes = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()   # noqa: SLF001 - the documented way to list a model's ops
    kinds = [o["op_name"] for o in ops]
    assert kinds.count("QUANTIZE") == 1 and kinds.count("DEQUANTIZE") == 1
    convs = [o for o in ops if o["op_name"] == "CONV_2D"]
    assert convs and all(dtypes[o["outputs"][0]] == np.int8 for o in convs)
    geometry = {"GATHER", "LOG", "FLOOR", "DIV", "ARG_MAX", "SUM", "SELECT", "SELECT_V2", "SUB",
                "TRANSPOSE", "REDUCE_MAX", "FULLY_CONNECTED", "PACK", "CAST"}
    for o in ops:
        if o["op_name"] in geometry:
            touched = [dtypes[i] for i in list(o["inputs"]) + list(o["outputs"]) if i >= 0]
            assert np.int8 not in touched, o


def test_crop_runners_refuse_a_pipeline_file(pipelines):
    from model.runner import ModelFileError, load_runner

    with pytest.raises(ModelFileError, match="PipelineRunner"):
        load_runner(_path(pipelines, "float32"))


def test_float32_pipeline_agrees_with_run_py_eval(pipelines, quickstart_run, tmp_path):
    """Quickstart val records (192x192 frames padded into 640x640), against run.py eval of
    the Keras model: the bar of the issue, and the reference is run.py eval's own AP."""
    import run
    from export.pipeline_model import agreement

    result = agreement(_path(pipelines, "float32"), quickstart_run.final_model, quickstart_run.records)
    assert result["examples"] == 100 and result["keypoints"] == 1700 and result["skipped_frames"] == 0
    _agrees(result)
    metrics_json = str(tmp_path / "eval.json")
    assert run.main(["eval", "--model_path", quickstart_run.final_model, "--tfrecords",
                     quickstart_run.records, "--metrics_json", metrics_json]) in (0, None)
    with open(metrics_json, encoding="utf-8") as f:
        assert json.load(f)["coco"]["AP"] == pytest.approx(result["ap_reference"], abs=1e-9)


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_pipeline_agrees_on_real_coco_persons(pipelines, quickstart_run, coco_tfrecords, quantization):
    """Real COCO val2017 photos (320-640 px) with their ground-truth boxes, against run.py
    eval of the crop model of the same quantization (float32: the Keras model): the bar of
    the issue, int8 as float32."""
    from export.pipeline_model import agreement

    reference = quickstart_run.final_model if quantization == "float32" else _path(pipelines, "int8", False)
    result = agreement(_path(pipelines, quantization), reference, coco_tfrecords)
    assert result["examples"] == 40
    _agrees(result)


def test_int8_pipeline_agrees_with_int8_eval(pipelines, quickstart_run):
    """Against run.py eval of final_int8.tflite (calibrated on the same crops) on the
    quickstart val records: the bar of the issue; and on the crop the pipeline samples
    itself, which is eval's, final_int8.tflite decoded by the Predictor gives its keypoints
    exactly: the network is the --quantize int8 network, the rest float."""
    from ai_edge_litert.interpreter import Interpreter

    from export.pipeline_model import agreement, frames_and_crops, record_box
    from model.predictor import Predictor
    from model.runner import load_runner

    reference = _path(pipelines, "int8", pipeline=False)
    path = _path(pipelines, "int8")
    result = agreement(path, reference, quickstart_run.records)
    _agrees(result)

    runner = load_runner(reference)
    predictor = Predictor(runner, runner.card)
    interpreter = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    crop_shape = [1, *runner.input_size, 3]
    crop_index = next(d["index"] for d in interpreter.get_tensor_details()   # the sampled crop
                      if d["dtype"] == np.float32 and list(d["shape"]) == crop_shape)
    for frame, eval_crop, labels in frames_and_crops(quickstart_run.records, "val", runner.card).take(20):
        box = record_box(labels["center"].numpy(), labels["scale"].numpy())
        interpreter.set_tensor(inputs["image"], _padded(frame.numpy())[None])
        interpreter.set_tensor(inputs["box"], box[None])
        interpreter.invoke()
        crop = interpreter.get_tensor(crop_index)
        np.testing.assert_array_equal(crop[0], eval_crop.numpy())
        coords, _ = predictor.crop_keypoints(crop.astype(np.uint8))
        expected = predictor.to_image(coords, labels["matrix"].numpy()[None])[0]
        np.testing.assert_allclose(interpreter.get_tensor(outputs["keypoints"])[0], expected, atol=1e-3)


# ----------------------------------------------------------------------------- export.verify


def _verify(argv):
    from export.verify import main
    return main(argv)


VERIFY_FAST = ["--max_examples", "40", "--diff_examples", "16", "--latency_runs", "2", "--rounds", "1"]
# enough for a verdict that does not hang on a fraction (a swapped network misses by pixels,
# an unjudged row is unjudged whatever the count)
VERIFY_FEW = ["--max_examples", "10", "--diff_examples", "8", "--latency_runs", "1", "--rounds", "1"]


def test_verify_scores_the_pipelines(pipelines, quickstart_run, tmp_path, capsys):
    """python -m export.verify --models_dir DIR: besides the crop models, each pipeline's
    agreement with run.py eval of the crop model of its quantization, judged, in the table
    and the json; exit 0."""
    out, _ = pipelines
    report_path = str(tmp_path / "verify.json")
    assert _verify(["--models_dir", out, "--tfrecords", quickstart_run.records,
                    "--json", report_path] + VERIFY_FAST) == 0
    printed = capsys.readouterr().out
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    assert [r["name"] for r in report["rows"]] == ["final.keras", "final_float32.tflite", "final_int8.tflite"]
    rows = {r["name"]: r for r in report["pipelines"]}
    assert set(rows) == {"final_float32_pipeline.tflite", "final_int8_pipeline.tflite"}
    assert rows["final_float32_pipeline.tflite"]["reference_name"] == "final.keras"
    assert rows["final_int8_pipeline.tflite"]["reference_name"] == "final_int8.tflite"
    for row in rows.values():
        assert row["judged"] and not row["problems"] and row["examples"] == 40, row
        assert row["over_half_px_fraction"] <= 1 - WITHIN_HALF_PX and row["median_px"] < MEDIAN_PX
        figures = {"max_px", "p99_px", "ap_pipeline", "ap_reference", "pck_pipeline", "pck_reference"}
        assert figures <= set(row)
        assert row["name"] in printed
    assert report["failed"] == [] and "frame -> keypoints pipelines" in printed


def test_verify_fails_a_pipeline_that_misses_eval(pipelines, quickstart_run, tmp_path, capsys):
    """A pipeline file whose network is not the one of its manifest entry (the float32 file
    copied over the int8 one): more than 1% of keypoints over 0.5 px from run.py eval of
    final_int8.tflite, FAIL, one error line naming it, exit 1."""
    out, _ = pipelines
    copy = str(tmp_path / "exported")
    shutil.copytree(out, copy)
    shutil.copy(os.path.join(copy, "final_float32_pipeline.tflite"),
                os.path.join(copy, "final_int8_pipeline.tflite"))
    assert _verify(["--models_dir", copy, "--tfrecords", quickstart_run.records] + VERIFY_FEW) == 1
    captured = capsys.readouterr()
    with open(os.path.join(copy, "verify.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert report["failed"] == ["final_int8_pipeline.tflite"]
    row = next(r for r in report["pipelines"] if r["name"] == "final_int8_pipeline.tflite")
    assert row["problems"] and row["over_half_px_fraction"] > 1 - WITHIN_HALF_PX
    assert "FAIL final_int8_pipeline.tflite" in captured.out
    assert captured.err.count("error:") == 1 and "final_int8_pipeline.tflite" in captured.err


def test_verify_does_not_judge_an_int8_pipeline_without_its_crop_model(pipelines, quickstart_run, tmp_path,
                                                                       capsys):
    """No int8 crop model in the folder: the int8 pipeline is compared with the float model,
    said plainly and not judged (an int8 network is not the float one to half a pixel)."""
    out, _ = pipelines
    copy = str(tmp_path / "exported")
    shutil.copytree(out, copy)
    manifest_path = os.path.join(copy, "export_manifest.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["variants"] = [v for v in manifest["variants"] if v["quantization"] != "int8"]
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    assert _verify(["--models_dir", copy, "--tfrecords", quickstart_run.records] + VERIFY_FEW) == 0
    with open(os.path.join(copy, "verify.json"), encoding="utf-8") as f:
        rows = {r["name"]: r for r in json.load(f)["pipelines"]}
    row = rows["final_int8_pipeline.tflite"]
    assert not row["judged"] and not row["problems"] and row["reference_name"] == "final.keras"
    assert "--quantize int8" in row["note"] and "not judged" in capsys.readouterr().out


@pytest.mark.parametrize("records, split, message", [
    ("missing", "val", "dataset_info.json"),
    ("quickstart", "test", "test"),
])
def test_verify_names_a_wrong_records_folder(pipelines, quickstart_run, tmp_path, capsys, records, split,
                                             message):
    """A records folder that is not one, or lacks the split: one error line naming it, exit 2."""
    out, _ = pipelines
    folder = str(tmp_path / "nothing") if records == "missing" else quickstart_run.records
    os.makedirs(folder, exist_ok=True)
    assert _verify(["--models_dir", out, "--tfrecords", folder, "--split", split,
                    "--json", str(tmp_path / "v.json")] + VERIFY_FAST) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and folder in err and message in err, err
    assert not os.path.exists(tmp_path / "v.json")


def test_coordinates_are_frame_pixels_wherever_the_subject_is(pipelines, quickstart_run):
    """The same person moved within a larger frame (and its box with it): keypoints move by
    that offset (to float32 rounding); no box is the whole frame; too large a frame names --frame_size."""
    from export.pipeline_model import frames_and_crops
    from model.card import read_card
    from model.runner import PipelineRunner
    from pipeline.sources import square_box

    runner = PipelineRunner(_path(pipelines, "float32"))
    card, _ = read_card(quickstart_run.final_model)
    frame, _, labels = next(iter(frames_and_crops(quickstart_run.records, "val", card)))
    frame = frame.numpy()
    box = np.asarray(square_box(labels["center"].numpy(), float(labels["scale"])))
    keypoints, confidence = runner(frame, box)
    h, w = frame.shape[:2]
    for dx, dy in ((37, 23), (FRAME[1] - w, FRAME[0] - h)):
        moved = np.zeros((h + dy, w + dx, 3), np.uint8)
        moved[dy:, dx:] = frame
        got, got_conf = runner(moved, box + [dx, dy, 0, 0])
        # A wrong origin, stride or half-pixel shift moves points by >= 0.5 px. What remains is
        # float32 rounding of the larger frame's affine (about 1e-4 px), which DARK's Newton
        # step can magnify on a flat, low peak: CI once saw one point of 34 move 0.026 px.
        error = np.abs(got - (keypoints + [dx, dy]))
        assert np.median(error) < 1e-3 and error.max() < 0.1, error.max()
        np.testing.assert_allclose(got_conf, confidence, atol=1e-3)
    np.testing.assert_allclose(runner(frame, None)[0], runner(frame, [0, 0, w, h])[0], atol=1e-3)
    with pytest.raises(ValueError, match="--frame_size"):
        runner(np.zeros((FRAME[0] + 1, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="w, h > 0"):
        runner(frame, [10, 10, 0, 50])


README_DEVICE_CODE = '''
import numpy as np
from ai_edge_litert.interpreter import Interpreter

pose = Interpreter(model_path=PATH).get_signature_runner()
H, W = 640, 640                                # the --frame_size it was exported for

def keypoints(frame, box=None):                # frame: RGB uint8 [h, w, 3], h <= H, w <= W
    image = np.zeros((1, H, W, 3), np.uint8)
    image[0, :frame.shape[0], :frame.shape[1]] = frame       # pad bottom / right
    box = box or (0, 0, frame.shape[1], frame.shape[0])      # x, y, w, h in frame pixels
    out = pose(image=image, box=np.array([box], np.float32))
    return out["keypoints"][0], out["confidence"][0]         # [K, 2] frame px, [K]
'''


def test_the_readme_device_code_runs_the_file(pipelines, coco_paths):
    """The README's dozen LiteRT lines give PipelineRunner's keypoints on a real photo."""
    import cv2

    from model.runner import PipelineRunner

    path = _path(pipelines, "int8")
    namespace = {"PATH": path}
    exec(compile(README_DEVICE_CODE, "README", "exec"), namespace)   # noqa: S102
    name = sorted(os.listdir(coco_paths[1]))[0]
    frame = cv2.imread(os.path.join(coco_paths[1], name))[..., ::-1].copy()
    box = (40.0, 30.0, 200.0, 300.0)
    for b in (None, box):
        xy, conf = namespace["keypoints"](frame, b)
        want_xy, want_conf = PipelineRunner(path)(frame, b)
        np.testing.assert_array_equal(xy, want_xy)
        np.testing.assert_array_equal(conf, want_conf)
