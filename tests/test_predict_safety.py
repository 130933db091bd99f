"""run.py predict never destroys an input or loses an output; model files that are not what
their name says end eval/predict/export with exit 2 naming the file. Real COCO and
DeepLabCut images from ../shared/data; the session's quickstart model (tests/trained_model.py;
what it predicts is not the point here)."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest

from tests.conftest import COCO_IMAGES, DLC_DIR
from tests.test_run import _main as _run

pytestmark = pytest.mark.skipif(not os.path.isdir(COCO_IMAGES), reason="shared data not found")


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def model_path(quickstart_run):
    return quickstart_run.final_model


@pytest.fixture
def photos(tmp_path):
    """A folder with three real COCO photos (copies)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in sorted(os.listdir(COCO_IMAGES))[:3]:
        shutil.copy(os.path.join(COCO_IMAGES, name), folder / name)
    return folder


def _video(path, fps, frames=3):
    """A video of real DeepLabCut frames (downscaled) at `fps`."""
    import cv2
    names = sorted(os.listdir(os.path.join(DLC_DIR, "images")))[:frames]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    for name in names:
        writer.write(cv2.resize(cv2.imread(os.path.join(DLC_DIR, "images", name)), (160, 120)))
    writer.release()
    return str(path)


def _frames_and_fps(path):
    import cv2
    capture = cv2.VideoCapture(str(path))
    fps, n = capture.get(cv2.CAP_PROP_FPS), 0
    while capture.read()[0]:
        n += 1
    return n, fps


def test_output_onto_the_inputs_is_refused(model_path, photos, capsys):
    """--output = the input folder, or the input image itself: exit 2, photos untouched."""
    before = {p.name: _digest(p) for p in photos.iterdir()}
    code, out, err = _run(["predict", "--model_path", model_path, "--input", str(photos),
                           "--output", str(photos)], capsys)
    assert code == 2 and "would overwrite the input image" in err and str(photos) in err, err
    one = sorted(photos.iterdir())[0]
    code, out, err = _run(["predict", "--model_path", model_path, "--input", str(one),
                           "--output", str(one)], capsys)
    assert code == 2 and f"would overwrite the input image {one}" in err, err
    assert {p.name: _digest(p) for p in photos.iterdir()} == before


def test_unreadable_images_are_skipped_and_counted(model_path, photos, tmp_path, capsys):
    """One undecodable file in a folder: the others are drawn, the bad one is listed; a folder
    with nothing readable: exit 2."""
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    code, out, err = _run(["predict", "--model_path", model_path, "--input", str(photos),
                           "--output", str(tmp_path / "drawn")], capsys)
    assert code == 0, err
    assert "3 frame(s)" in out and "skipped 1 unreadable image(s): " in out and "broken.jpg" in out
    assert sorted(os.listdir(tmp_path / "drawn")) == sorted(p.name for p in photos.iterdir()
                                                            if p.name != "broken.jpg")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG garbage")
    code, out, err = _run(["predict", "--model_path", model_path, "--input", str(bad),
                           "--output", str(tmp_path / "none")], capsys)
    assert code == 2 and "no frame could be processed" in err and "a.png" in err, err


def test_video_keeps_its_frame_rate_and_needs_a_video_name(model_path, tmp_path, capsys):
    """A 10 fps video is written at 10 fps with all its frames; an output name without a
    video extension (none, or .jpg) is refused before anything is written, as is the input
    itself."""
    clip = _video(tmp_path / "clip.mp4", 10.0)
    code, out, err = _run(["predict", "--model_path", model_path, "--input", clip,
                           "--output", str(tmp_path / "pose.avi")], capsys)
    assert code == 0, err
    assert _frames_and_fps(tmp_path / "pose.avi") == (3, 10.0)
    for bad in ("pose", "pose.jpg"):
        code, out, err = _run(["predict", "--model_path", model_path, "--input", clip,
                               "--output", str(tmp_path / bad)], capsys)
        assert code == 2 and "a video input is written as a video" in err and bad in err, err
        assert not os.path.exists(tmp_path / bad)
    before = _digest(clip)
    code, out, err = _run(["predict", "--model_path", model_path, "--input", clip,
                           "--output", clip], capsys)
    assert code == 2 and "is the input video" in err and _digest(clip) == before
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


# ------------------------------------------------------------------ model files
@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    """name -> path of files that are not what their name says."""
    import keras

    from export.convert import keras_converter
    root = tmp_path_factory.mktemp("bad")
    out = {}
    (root / "garbage.keras").write_bytes(np.random.default_rng(0).bytes(4096))
    out["garbage.keras"] = str(root / "garbage.keras")
    inp = keras.Input((96, 100, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    odd = keras.Model(inp, keras.layers.Conv2D(17, 3, strides=4, padding="same")(scaled))
    odd.save(str(root / "odd_size.keras"))
    from configs import builtin_spec
    from model.card import ModelCard, write_card_beside
    write_card_beside(str(root / "odd_size.keras"), ModelCard(builtin_spec("coco"), (96, 100)))
    out["odd_size.keras"] = str(root / "odd_size.keras")
    tiny = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 1)])   # any .tflite
    flat = keras_converter(tiny).convert()
    (root / "renamed_tflite.keras").write_bytes(flat)
    out["renamed_tflite.keras"] = str(root / "renamed_tflite.keras")
    (root / "text.tflite").write_text("this is not a flatbuffer\n")
    out["text.tflite"] = str(root / "text.tflite")
    (root / "empty_saved_model").mkdir()
    out["empty_saved_model"] = str(root / "empty_saved_model")
    (root / "broken_saved_model").mkdir()
    (root / "broken_saved_model" / "saved_model.pb").write_bytes(b"garbage")
    out["broken_saved_model"] = str(root / "broken_saved_model")
    return out


@pytest.fixture(scope="module")
def coco_val_records(tmp_path_factory, coco_paths):
    from pipeline.convert import ConvertOptions, convert_dataset
    out = str(tmp_path_factory.mktemp("coco") / "records")
    convert_dataset("coco", coco_paths[0], coco_paths[1], out, split="val", num_shards=1,
                    options=ConvertOptions(num_workers=1, quiet=True))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["garbage.keras", "odd_size.keras", "renamed_tflite.keras",
                                  "text.tflite", "empty_saved_model", "broken_saved_model"])
def test_eval_and_predict_name_a_bad_model_file(name, bad_models, coco_val_records, capsys):
    path = bad_models[name]
    image = os.path.join(COCO_IMAGES, sorted(os.listdir(COCO_IMAGES))[0])
    for argv in (["eval", "--model_path", path, "--tfrecords", coco_val_records],
                 ["predict", "--model_path", path, "--input", image]):
        code, out, err = _run(argv, capsys)
        assert code == 2, (argv, out, err)
        assert f"error: {path}" in err and "Traceback" not in err, err
    if name == "odd_size.keras":
        assert "96x100 is not a multiple of 32" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["garbage.keras", "odd_size.keras", "renamed_tflite.keras"])
def test_export_names_a_bad_keras_file(name, bad_models, tmp_path, capsys):
    from export.__main__ import main
    path = bad_models[name]
    code = main(["--model_path", path, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and path in err, err
    if name == "odd_size.keras":
        assert "96x100 is not a multiple of 32" in err
    assert not os.path.exists(tmp_path / "out" / "export_manifest.json")
