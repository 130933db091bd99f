"""Atomic writes (configs.files) and the atomic video writer (pipeline.video): a target is
whole or as it was, and nothing temporary is left behind."""
from __future__ import annotations

import glob
import json
import os

import cv2
import numpy as np
import pytest

from configs.files import atomic_path, atomic_write_json, atomic_write_text, temp_path
from pipeline.video import VideoWriter


def test_temp_names_are_siblings_that_keep_or_drop_the_extension(tmp_path):
    path = str(tmp_path / "clip.mp4")
    assert temp_path(path) == str(tmp_path / f"clip.tmp-{os.getpid()}.mp4")
    assert temp_path(path, keep_extension=False) == f"{path}.tmp-{os.getpid()}"
    assert temp_path(str(tmp_path / "folder") + "/", keep_extension=False) == \
        str(tmp_path / f"folder.tmp-{os.getpid()}")


def test_keras_weights_are_written_whole_under_a_name_keras_accepts(tmp_path):
    """A `.weights.h5` temporary keeps its compound suffix (Keras refuses any other), so
    weights go through atomic_path like every file; a failed save leaves no temporary."""
    import keras
    path = str(tmp_path / "run.weights.h5")
    assert temp_path(path) == str(tmp_path / f"run.tmp-{os.getpid()}.weights.h5")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            model.save_weights(tmp)
            raise RuntimeError("killed after the save, before the rename")
    assert sorted(os.listdir(tmp_path)) == ["run.weights.h5"]
    copy = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    copy.load_weights(path)
    np.testing.assert_array_equal(copy.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "info.json")
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path, keep_extension=False) as tmp:
            with open(tmp, "w") as f:
                f.write('{"a": ')                      # half written, then the writer fails
            raise RuntimeError("killed mid-write")
    assert json.load(open(path)) == {"a": 1}
    assert glob.glob(str(tmp_path / "*")) == [path]
    atomic_write_text(path, "new\n")
    assert open(path).read() == "new\n" and glob.glob(str(tmp_path / "*")) == [path]


def test_a_folder_is_replaced_whole(tmp_path):
    path = str(tmp_path / "saved_model")
    for content in ("old", "new"):
        with atomic_path(path, keep_extension=False) as tmp:
            os.makedirs(tmp)
            open(os.path.join(tmp, "model.pb"), "w").write(content)
    assert os.listdir(path) == ["model.pb"] and open(os.path.join(path, "model.pb")).read() == "new"
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]


def _frames(n, height=48, width=64):
    rng = np.random.default_rng(0)
    return [np.ascontiguousarray(rng.integers(0, 255, (height, width, 3), np.uint8)) for _ in range(n)]


def test_video_appears_whole_with_every_frame(tmp_path):
    path = str(tmp_path / "out" / "clip.mp4")
    with VideoWriter(path, fps=10) as writer:
        for frame in _frames(7):
            writer.write(frame)
            assert not os.path.exists(path)            # only the temporary sibling so far
        assert writer.close() == path
    capture = cv2.VideoCapture(path)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (48, 64, 3)
    assert os.listdir(tmp_path / "out") == ["clip.mp4"]


def test_video_interrupted_leaves_nothing_and_keeps_an_older_file(tmp_path):
    path = str(tmp_path / "clip.avi")
    with open(path, "wb") as f:
        f.write(b"an older video")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, fps=25) as writer:
            for frame in _frames(3):
                writer.write(frame)
            raise KeyboardInterrupt
    assert open(path, "rb").read() == b"an older video"
    assert os.listdir(tmp_path) == ["clip.avi"]


def test_video_names_without_a_container_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"clip\.gif.*\.mp4"):
        VideoWriter(str(tmp_path / "clip.gif"), fps=25)
    with pytest.raises(ValueError, match="wrote nothing"):
        VideoWriter(str(tmp_path / "empty.mp4"), fps=25).close()
    assert os.listdir(tmp_path) == []
