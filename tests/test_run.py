"""run.py end to end: training under every strategy we can run on CPU, learning on the
synthetic set, eval with pycocotools, predict (resume after SIGTERM and SIGKILL:
tests/test_resume_identity.py).

run.py runs in this process (``run.main(argv)``) except where a process of its own is the
point: several workers, logical CPU devices configured before TF starts.
The trained model is the session's quickstart run (tests/trained_model.py), trained once."""
from __future__ import annotations

import glob
import json
import os
import socket
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
COCO_MINI = os.path.join(SHARED, "coco_val_mini")

pytestmark = pytest.mark.slow


def _env(**extra):
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _main(argv, capsys):
    """run.py in this process: (exit code, stdout, stderr)."""
    import run
    code = run.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def small_records(root, num_train=64, num_val=16, image_size=(96, 96), seed=3, num_shards=2):
    """A small synthetic set converted to TFRecords in `root`/records (converted in this
    process: spawning converter workers costs more than these few images)."""
    from pipeline.convert import ConvertOptions, convert_dataset
    from pipeline.synthetic import generate_dataset
    generate_dataset(str(root / "raw"), num_train=num_train, num_val=num_val, image_size=image_size,
                     seed=seed)
    out = str(root / "records")
    for split in ("train", "val"):
        convert_dataset("coco", str(root / "raw" / "annotations" / f"person_keypoints_{split}.json"),
                        str(root / "raw" / "images" / split), out, split=split, num_shards=num_shards,
                        options=ConvertOptions(num_workers=1, quiet=True))
    return out


TINY = ["--num_stacks", "1", "--mobile", "--tiny", "--model_image_size", "64x64",
        "--batch_size", "8", "--optimizer", "adam", "--learning_rate", "1e-3", "--quiet"]


# run.py in a process of its own under MirroredStrategy over two logical CPU devices (they
# must be configured before TF starts): python -c MIRRORED_RUN_PY train ...
MIRRORED_RUN_PY = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {REPO!r})
from model import distribute
distribute.make_strategy = lambda **_: tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
import run
sys.exit(run.main(sys.argv[1:]))
"""


# run.py under MirroredStrategy (two logical CPUs, rotated crops by ImageProjectiveTransformV3)
# is trained by tests/test_data_service.py, fed by the tf.data service: one launch checks both.


def _wait_until(procs, ready, what: str, output, timeout_s: float = 600.0) -> None:
    """Polls `ready()` until it holds; when a process of `procs` ends first or `timeout_s`
    pass, kills them all and fails with the tail of `output()`."""
    deadline = time.time() + timeout_s
    while not ready():
        ended = [p for p in procs if p.poll() is not None]
        if ended or time.time() > deadline:
            for p in procs:
                p.kill()
            why = "a process ended" if ended else f"timed out after {timeout_s:g} s"
            pytest.fail(f"{why} before {what}:\n" + output()[-3000:])
        time.sleep(0.05)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# Two run.py workers (MultiWorkerMirroredStrategy on loopback) training together to identical
# weights, only the chief writing: tests/test_resume_identity.py::
# test_sigterm_to_one_of_two_workers_saves_and_resumes checks that on its resumed launch (each
# two-worker launch costs two graph compilations, so the suite has two launches, not three).


def test_bad_flags_fail_before_work(quickstart_records, tmp_path, capsys):
    records = quickstart_records.records       # 17 COCO keypoints
    wrong = tmp_path / "classes.txt"
    wrong.write_text("a\nb\nc\n")
    code, out, err = _main(["train", "--tfrecords", records, "--classes_path", str(wrong),
                            "--log_dir", str(tmp_path / "l")], capsys)
    assert code == 2
    assert "records were written with 17" in err
    code, out, err = _main(["train", "--tfrecords", records, "--model_image_size", "100x100",
                            "--log_dir", str(tmp_path / "l")], capsys)
    assert code == 2 and "multiples of 32" in err
    assert not os.path.exists(tmp_path / "l")


@pytest.fixture(scope="module")
def coco_records(tmp_path_factory):
    if not os.path.isdir(COCO_MINI):
        pytest.skip(f"shared data not found at {COCO_MINI}")
    from pipeline.convert import ConvertOptions, convert_dataset
    out = str(tmp_path_factory.mktemp("coco") / "records")
    convert_dataset("coco", os.path.join(COCO_MINI, "annotations", "person_keypoints_val2017_mini.json"),
                    os.path.join(COCO_MINI, "images"), out, split="val", num_shards=1,
                    options=ConvertOptions(num_workers=1, quiet=True))
    return out


def test_eval_writes_coco_results_that_pycocotools_scores(coco_records, quickstart_run, tmp_path,
                                                          capsys):
    """The quickstart model (17 COCO keypoints) on the real COCO records."""
    result_json = str(tmp_path / "results.json")
    code, out, err = _main(["eval", "--model_path", quickstart_run.final_model, "--tfrecords",
                            coco_records, "--result_json", result_json, "--flip_test"], capsys)
    assert code == 0, err[-3000:]
    metrics = json.loads(out[out.index("{"):])
    info = json.load(open(os.path.join(coco_records, "dataset_info.json")))
    assert metrics["examples"] == info["counts"]["val"]
    results = json.load(open(result_json))
    assert len(results) == info["counts"]["val"]
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    assert 0.0 <= metrics["coco"]["AP"] <= 1.0
    from pycocotools.coco import COCO
    gt = COCO(os.path.join(COCO_MINI, "annotations", "person_keypoints_val2017_mini.json"))
    gt.loadRes(result_json)   # pycocotools accepts the file


def test_learns_the_synthetic_set(quickstart_run, capsys):
    """run.py train with the quickstart's recipe (the Makefile's lines, trained once per session
    by tests/trained_model.py) on the built-in synthetic set reaches validation PCK >= 0.9,
    and so does its final model under run.py eval."""
    from tests.trained_model import quickstart_argv
    run = quickstart_run
    pcks = list(run.val_pcks)
    argv = quickstart_argv("run.py", run.root, mode="train")
    epochs = int(argv[argv.index("--total_epoch") + 1])
    assert len(pcks) == epochs and run.summary["steps"] == epochs * (800 // 16), (pcks, run.summary)
    assert max(pcks) >= 0.9, pcks
    assert run.summary["best_val_pck"] == pytest.approx(max(pcks), abs=1e-4)
    assert glob.glob(os.path.join(run.log_dir, f"ep*-val_pck{max(pcks):.4f}.keras"))
    code, out, err = _main(["eval", "--model_path", run.final_model, "--tfrecords", run.records],
                           capsys)
    assert code == 0, err[-3000:]
    metrics = json.loads(out[out.index("{"):])
    assert metrics["examples"] == 100
    assert metrics["pck"] >= 0.9, metrics


def test_predict_on_image_folder_and_video(quickstart_run, tmp_path, capsys):
    """The demo writes a drawn image for an image, one per image for a folder, and a video
    with as many frames for a video file."""
    import cv2

    from pipeline.synthetic import generate_dataset
    raw = tmp_path / "raw"
    generate_dataset(str(raw), num_train=1, num_val=3, image_size=(96, 128), seed=5)
    folder = raw / "images" / "val"
    path = quickstart_run.final_model
    first = sorted(os.listdir(folder))[0]
    code, out, err = _main(["predict", "--model_path", path, "--input", str(folder / first),
                            "--output", str(tmp_path / "one.jpg")], capsys)
    assert code == 0, err[-3000:]
    assert cv2.imread(str(tmp_path / "one.jpg")).shape == (96, 128, 3)
    code, out, err = _main(["predict", "--model_path", path, "--input", str(folder), "--output",
                            str(tmp_path / "drawn")], capsys)
    assert code == 0, err[-3000:]
    assert sorted(os.listdir(tmp_path / "drawn")) == sorted(os.listdir(folder))
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for name in sorted(os.listdir(folder)):
        writer.write(cv2.imread(str(folder / name)))
    writer.release()
    code, out, err = _main(["predict", "--model_path", path, "--input", video, "--output",
                            str(tmp_path / "clip_pose.mp4")], capsys)
    assert code == 0, err[-3000:]
    capture = cv2.VideoCapture(str(tmp_path / "clip_pose.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3
    code, out, err = _main(["predict", "--model_path", str(tmp_path / "missing.keras"), "--input",
                            video], capsys)
    assert code == 2 and "missing.keras" in err
