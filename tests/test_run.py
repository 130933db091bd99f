"""run.py end to end: training under every strategy we can run on CPU, resume after SIGKILL,
learning on the synthetic set, eval with pycocotools, predict."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
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


def _run(args, timeout=600, **env):
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py")] + args, cwd=REPO,
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def synthetic_records(tmp_path_factory):
    """A small synthetic set converted to TFRecords (train 96, val 32, 128 px images)."""
    from pipeline.convert import convert_dataset
    from pipeline.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(str(root / "raw"), num_train=96, num_val=32, image_size=(128, 128), seed=3)
    out = str(root / "records")
    for split in ("train", "val"):
        convert_dataset("coco", str(root / "raw" / "annotations" / f"person_keypoints_{split}.json"),
                        str(root / "raw" / "images" / split), out, split=split, num_shards=2)
    return out


TINY = ["--num_stacks", "1", "--mobile", "--tiny", "--model_image_size", "64x64",
        "--batch_size", "8", "--optimizer", "adam", "--learning_rate", "1e-3", "--quiet"]


def test_mirrored_two_logical_cpus(synthetic_records, tmp_path):
    """The same loop under MirroredStrategy with two logical CPU devices (rotated crops by
    ImageProjectiveTransformV3 here: the other runs use the default XLA sampler)."""
    script = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {REPO!r})
from model import distribute
distribute.make_strategy = lambda tpu=None, gpu_num=None: tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
import run
sys.exit(run.main(sys.argv[1:]))
"""
    log_dir = str(tmp_path / "logs")
    proc = subprocess.run(
        [sys.executable, "-c", script, "train", "--tfrecords", synthetic_records, "--log_dir", log_dir,
         "--total_epoch", "1", "--steps_per_epoch", "4", "--steps_per_loop", "2",
         "--rotated_sampler", "projective"] + TINY,
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(os.path.join(log_dir, "final.keras"))
    assert open(os.path.join(log_dir, "val.txt")).read().startswith("Epoch 1:")
    config = json.load(open(os.path.join(log_dir, "run_config.json")))
    assert config["parser"]["rotated_sampler"] == "projective"


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_multi_worker_mirrored(synthetic_records, tmp_path):
    """Two run.py processes on loopback train one epoch together; identical weights."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    log_dir = str(tmp_path / "logs")
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "run.py"), "train", "--tfrecords", synthetic_records,
             "--log_dir", log_dir, "--total_epoch", "1", "--steps_per_epoch", "4",
             "--steps_per_loop", "2", "--seed", "1"] + [a for a in TINY if a != "--quiet"],
            cwd=REPO, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outputs.append(out)
        assert p.returncode == 0, out[-3000:]
    digests = [re.findall(r"weights_digest: (\w+)", out) for out in outputs]
    assert digests[0] and digests[0] == digests[1], digests
    assert os.path.isfile(os.path.join(log_dir, "final.keras"))
    checkpoints = glob.glob(os.path.join(log_dir, "checkpoints", "ckpt-*.index"))
    assert len(checkpoints) == 1, checkpoints
    # only the chief writes into the log dir: no second copy of anything
    assert len(glob.glob(os.path.join(log_dir, "**", "final.keras"), recursive=True)) == 1


def test_sigkill_resume(synthetic_records, tmp_path):
    """Killed mid-epoch with SIGKILL, relaunched with the same command: it resumes from the
    last checkpoint (the step counter continues) and finishes with the same epochs."""
    log_dir = str(tmp_path / "logs")
    args = [sys.executable, os.path.join(REPO, "run.py"), "train", "--tfrecords", synthetic_records,
            "--log_dir", log_dir, "--total_epoch", "2", "--steps_per_epoch", "12",
            "--steps_per_loop", "1", "--checkpoint_steps", "3"] + [a for a in TINY if a != "--quiet"]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    ckpt_dir = os.path.join(log_dir, "checkpoints")
    while time.time() < deadline:
        if any(os.path.exists(os.path.join(ckpt_dir, f"ckpt-{n}.index")) for n in (6, 9)):
            break
        if proc.poll() is not None:
            pytest.fail("training ended before it could be killed:\n" + proc.stdout.read()[-3000:])
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    import tensorflow as tf
    killed_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert 0 < killed_at < 24
    again = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and f"at step {killed_at}" in again.stdout
    final_step = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert final_step == 24
    lines = open(os.path.join(log_dir, "val.txt")).read().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Epoch 1", "Epoch 2"]   # none twice
    from tests.test_resume_identity import assert_each_step_once
    assert_each_step_once(log_dir)


def test_bad_flags_fail_before_work(synthetic_records, tmp_path):
    wrong = tmp_path / "classes.txt"
    wrong.write_text("a\nb\nc\n")
    proc = _run(["train", "--tfrecords", synthetic_records, "--classes_path", str(wrong),
                 "--log_dir", str(tmp_path / "l")])
    assert proc.returncode == 2
    assert "records were written with 17" in proc.stderr
    proc = _run(["train", "--tfrecords", synthetic_records, "--model_image_size", "100x100"])
    assert proc.returncode == 2 and "multiples of 32" in proc.stderr
    assert not os.path.exists(tmp_path / "l")


@pytest.fixture(scope="module")
def coco_records(tmp_path_factory):
    if not os.path.isdir(COCO_MINI):
        pytest.skip(f"shared data not found at {COCO_MINI}")
    from pipeline.convert import convert_dataset
    out = str(tmp_path_factory.mktemp("coco") / "records")
    convert_dataset("coco", os.path.join(COCO_MINI, "annotations", "person_keypoints_val2017_mini.json"),
                    os.path.join(COCO_MINI, "images"), out, split="val", num_shards=1)
    return out


def test_eval_writes_coco_results_that_pycocotools_scores(coco_records, tmp_path):

    from configs import builtin_spec
    from model import build_hourglass
    from model.runner import model_metadata, write_metadata
    model = build_hourglass(num_keypoints=17, num_stacks=1, num_channels=64, mobile=True,
                            input_size=(64, 64))
    path = str(tmp_path / "m.keras")
    model.save(path)
    write_metadata(path, model_metadata(builtin_spec("coco"), (64, 64)))
    result_json = str(tmp_path / "results.json")
    proc = _run(["eval", "--model_path", path, "--tfrecords", coco_records, "--result_json",
                 result_json, "--flip_test"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout[proc.stdout.index("{"):])
    info = json.load(open(os.path.join(coco_records, "dataset_info.json")))
    assert metrics["examples"] == info["counts"]["val"]
    results = json.load(open(result_json))
    assert len(results) == info["counts"]["val"]
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    assert 0.0 <= metrics["coco"]["AP"] <= 1.0
    from pycocotools.coco import COCO
    gt = COCO(os.path.join(COCO_MINI, "annotations", "person_keypoints_val2017_mini.json"))
    gt.loadRes(result_json)   # pycocotools accepts the file


def _makefile_variable(name):
    import re
    text = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    return re.search(rf"^{name} \?= (.*)$", text, flags=re.M).group(1).split()


def test_learns_the_synthetic_set(tmp_path):
    """run.py train with the quickstart's recipe on the built-in synthetic set reaches
    validation PCK >= 0.9 (about 4 minutes on 2 CPU cores)."""
    from pipeline.convert import convert_dataset
    from pipeline.synthetic import generate_dataset
    raw = tmp_path / "synthetic"
    generate_dataset(str(raw), num_train=800, num_val=100, seed=0)
    records = str(tmp_path / "records")
    for split in ("train", "val"):
        convert_dataset("coco", str(raw / "annotations" / f"person_keypoints_{split}.json"),
                        str(raw / "images" / split), records, split=split, num_shards=2)
    log_dir = str(tmp_path / "logs")
    proc = _run(["train", "--tfrecords", records, "--log_dir", log_dir]
                + _makefile_variable("QS_MODEL") + _makefile_variable("QS_TRAIN") + ["--quiet"],
                timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pcks = [float(line.split(":")[1]) for line in open(os.path.join(log_dir, "val.txt"))]
    assert max(pcks) >= 0.9, pcks
    assert glob.glob(os.path.join(log_dir, f"ep*-val_pck{max(pcks):.4f}.keras"))


def test_predict_on_image_folder_and_video(tmp_path):
    """The demo writes a drawn image for an image, one per image for a folder, and a video
    with as many frames for a video file."""
    import cv2

    from configs import builtin_spec
    from model import build_hourglass
    from model.runner import model_metadata, write_metadata
    from pipeline.synthetic import generate_dataset
    raw = tmp_path / "raw"
    generate_dataset(str(raw), num_train=1, num_val=3, image_size=(96, 128), seed=5)
    folder = raw / "images" / "val"
    model = build_hourglass(num_keypoints=17, num_stacks=1, num_channels=32, mobile=True,
                            input_size=(64, 64))
    path = str(tmp_path / "m.keras")
    model.save(path)
    write_metadata(path, model_metadata(builtin_spec("coco"), (64, 64)))
    first = sorted(os.listdir(folder))[0]
    proc = _run(["predict", "--model_path", path, "--input", str(folder / first),
                 "--output", str(tmp_path / "one.jpg")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cv2.imread(str(tmp_path / "one.jpg")).shape == (96, 128, 3)
    proc = _run(["predict", "--model_path", path, "--input", str(folder), "--output",
                 str(tmp_path / "drawn")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "drawn")) == sorted(os.listdir(folder))
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for name in sorted(os.listdir(folder)):
        writer.write(cv2.imread(str(folder / name)))
    writer.release()
    proc = _run(["predict", "--model_path", path, "--input", video, "--output",
                 str(tmp_path / "clip_pose.mp4")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    capture = cv2.VideoCapture(str(tmp_path / "clip_pose.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3
    proc = _run(["predict", "--model_path", str(tmp_path / "missing.keras"), "--input", video])
    assert proc.returncode == 2 and "missing.keras" in proc.stderr
