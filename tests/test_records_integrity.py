"""Nothing lost, nothing stale: a conversion killed at any commit stage leaves the old dataset
whole or a folder that readers refuse (and the next conversion repairs); readers take the
shard list from dataset_info.json and check it; write errors and damaged shards end in one
message naming the file; --dataset_path rebuilds its cache when annotations.json changes;
garbage inputs end in counted skips or one clear error. Real data from ../shared/data."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline import records  # noqa: E402
from pipeline.convert import (  # noqa: E402
    COMMIT_STAGES,
    KILL_ENV,
    ConversionError,
    ConvertOptions,
    convert_dataset,
    verify_dataset,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data")
COCO_JSON = os.path.join(DATA, "coco_val_mini", "annotations", "person_keypoints_val2017_mini.json")
COCO_IMAGES = os.path.join(DATA, "coco_val_mini", "images")
DLC_CSV = os.path.join(DATA, "dlc_openfield", "CollectedData_Pranav.csv")
DLC_IMAGES = os.path.join(DATA, "dlc_openfield", "images")
SERIAL = ConvertOptions(num_workers=1, quiet=True)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)

pytestmark = pytest.mark.skipif(not os.path.isfile(COCO_JSON), reason=f"shared data not found: {COCO_JSON}")


def our_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's own log lines; no traceback allowed."""
    assert "Traceback" not in stderr, stderr[-3000:]
    tf_log = ("WARNING: All log", "I0000", "W0000", "E0000")
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(tf_log)]


def shard_bytes(folder: str) -> dict:
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(folder, "*.tfrecord")))}


def convert_cmd(out: str, num_shards: int, split: str = "train") -> list[str]:
    return [sys.executable, os.path.join(REPO, "convert_to_tfrecord.py"), "--format", "coco",
            "--annotations", COCO_JSON, "--images", COCO_IMAGES, "--output", out, "--split", split,
            "--num_shards", str(num_shards), "--num_workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    """(folder with 4 train shards, bytes of the 4-shard set, bytes of the 2-shard set)."""
    base = tmp_path_factory.mktemp("records")
    old, new = str(base / "old"), str(base / "new")
    convert_dataset("coco", COCO_JSON, COCO_IMAGES, old, split="train", num_shards=4, options=SERIAL)
    convert_dataset("coco", COCO_JSON, COCO_IMAGES, new, split="train", num_shards=2, options=SERIAL)
    return old, shard_bytes(old), shard_bytes(new)


def read_through_readers(folder: str):
    """What a reader gets: the {name: bytes} of the checked train shards, or the RecordsError."""
    from model.trainer import split_pattern
    try:
        files = split_pattern(folder, "train")
    except records.RecordsError as e:
        return e
    return {os.path.basename(f): open(f, "rb").read() for f in files}


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.parametrize("stage", COMMIT_STAGES)
def test_conversion_killed_at_each_commit_stage(tmp_path, old_and_new, stage, capsys):
    old, old_bytes, new_bytes = old_and_new
    out = str(tmp_path / "records")
    shutil.copytree(old, out)
    proc = subprocess.run(convert_cmd(out, 2), env=dict(ENV, **{KILL_ENV: stage}), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]              # really SIGKILLed
    seen = read_through_readers(out)
    if stage == "shards_written":                                 # before the journal: old, whole
        assert seen == old_bytes
        assert glob.glob(os.path.join(out, "*.tmp-*"))            # the new shards, unread
    else:                                                         # inside the commit: refused
        assert isinstance(seen, records.RecordsError), seen.keys()
        assert records.JOURNAL_NAME in str(seen) and "convert_to_tfrecord.py" in str(seen)
        assert verify_dataset(out)
    if stage == "first_rename":
        # the user's case: 5 shard files on disk, the old list says 4; the CLI refuses it
        assert len(glob.glob(os.path.join(out, "train-*-of-*.tfrecord"))) == 5
        # in this process (a fresh interpreter's exit 2 is the truncated-shard test's)
        import run
        code = run.main(["eval", "--model_path", str(tmp_path / "none.keras"), "--tfrecords", out,
                         "--split", "train"])
        stderr = capsys.readouterr().err
        assert code == 2, stderr[-2000:]
        lines = our_lines(stderr)
        assert len(lines) == 1 and "error:" in lines[0] and records.JOURNAL_NAME in lines[0], lines
        # a conversion of ANOTHER split repairs the folder: the interrupted commit is completed
        convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="val", num_shards=1, options=SERIAL)
        assert read_through_readers(out) == new_bytes
    else:                                                         # the same command again repairs
        convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="train", num_shards=2, options=SERIAL)
        assert read_through_readers(out) == new_bytes
    assert not glob.glob(os.path.join(out, "*.tmp-*"))
    assert not os.path.exists(os.path.join(out, records.JOURNAL_NAME))
    assert {n for n in shard_bytes(out) if n.startswith("train")} == set(new_bytes)
    assert verify_dataset(out) == []


def test_readers_check_names_and_sizes_from_dataset_info(tmp_path, old_and_new):
    out = str(tmp_path / "records")
    shutil.copytree(old_and_new[0], out)
    info = json.load(open(os.path.join(out, records.INFO_NAME)))
    entry = info["splits"]["train"]
    assert len(entry["shard_bytes"]) == 4 and len(entry["shard_sha256"]) == 4
    # an extra shard that matches the old glob is not read
    shutil.copy(os.path.join(out, "train-00000-of-00004.tfrecord"),
                os.path.join(out, "train-00000-of-00002.tfrecord"))
    assert len(records.split_files(out, "train")) == 4
    assert any("train-00000-of-00002" in p for p in verify_dataset(out))
    os.remove(os.path.join(out, "train-00000-of-00002.tfrecord"))
    # a truncated shard is refused, naming the file
    victim = os.path.join(out, "train-00002-of-00004.tfrecord")
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[:-100])
    with pytest.raises(records.RecordsError, match="train-00002-of-00004.tfrecord.*bytes"):
        records.split_files(out, "train")
    # same size, other bytes: sizes pass, --verify's sha256 and the read-time check name it
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    open(victim, "wb").write(bytes(flipped))
    assert len(records.split_files(out, "train")) == 4
    assert any("train-00002-of-00004" in p and "sha256" in p for p in verify_dataset(out))
    from configs import builtin_spec
    from export.records import load_crops
    with pytest.raises(records.RecordsError, match="train-00002-of-00004.tfrecord"):
        load_crops(out, "train", builtin_spec("coco"), (64, 64), 4, "box", 1.25)
    # a missing shard
    os.remove(victim)
    with pytest.raises(records.RecordsError, match="train-00002-of-00004.tfrecord.*missing"):
        records.split_files(out, "train")


@pytest.mark.processes
def test_run_train_on_a_truncated_shard_exits_2_naming_it(tmp_path, old_and_new):
    """`python run.py train` itself (a fresh interpreter: its exit status and all of stderr)."""
    out = str(tmp_path / "records")
    shutil.copytree(old_and_new[0], out)
    victim = os.path.join(out, "train-00001-of-00004.tfrecord")
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[: len(raw) // 2])
    run = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "train", "--tfrecords", out,
                          "--log_dir", str(tmp_path / "logs"), "--num_stacks", "1", "--mobile", "--tiny",
                          "--model_image_size", "64x64", "--total_epoch", "1", "--quiet"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = our_lines(run.stderr)
    assert len(lines) == 1 and "error:" in lines[0] and victim in lines[0], lines


@pytest.mark.processes
def test_full_disk_leaves_nothing_and_one_message(tmp_path, old_and_new):
    """RLIMIT_FSIZE makes every write past 64 KB fail with EFBIG (Python ignores SIGXFSZ)."""
    out = str(tmp_path / "records")
    shutil.copytree(old_and_new[0], out)
    before = shard_bytes(out), open(os.path.join(out, records.INFO_NAME), "rb").read()
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
              "sys.argv = ['convert_to_tfrecord.py'] + sys.argv[1:]; import convert_to_tfrecord; "
              "sys.exit(convert_to_tfrecord.main())")
    proc = subprocess.run([sys.executable, "-c", script] + convert_cmd(out, 2)[2:], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = our_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the records in " + out), proc.stderr
    assert not glob.glob(os.path.join(out, "*.tmp-*"))
    assert (shard_bytes(out), open(os.path.join(out, records.INFO_NAME), "rb").read()) == before


def test_disk_full_while_writing_the_journal(tmp_path, old_and_new, monkeypatch):
    import errno

    import pipeline.convert as convert
    out = str(tmp_path / "records")
    shutil.copytree(old_and_new[0], out)
    before = shard_bytes(out)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(convert, "atomic_write_json", full)
    with pytest.raises(ConversionError, match="No space left on device"):
        convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="train", num_shards=2, options=SERIAL)
    assert not glob.glob(os.path.join(out, "*.tmp-*")) and shard_bytes(out) == before
    assert read_through_readers(out) == before


def test_unwritable_output_is_one_message(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConversionError, match="cannot write there"):
        convert_dataset("coco", COCO_JSON, COCO_IMAGES, str(a_file / "records"), split="val", options=SERIAL)
    if os.geteuid() == 0:
        return                      # root ignores permissions; the case above covers the message
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConversionError, match="cannot write there"):
            convert_dataset("coco", COCO_JSON, COCO_IMAGES, str(ro), split="val", options=SERIAL)
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def _custom_dataset(root, coco: dict, n: int) -> None:
    images = {i["id"]: i for i in coco["images"]}
    entries = []
    for a in [a for a in coco["annotations"] if any(a["keypoints"][2::3])][:n]:
        img = images[a["image_id"]]
        kp = a["keypoints"]
        x, y, w, h = a["bbox"]
        entries.append({"dataset": "c", "isValidation": 0, "img_paths": img["file_name"],
                        "objpos": [x + w / 2 + 0.5, y + h / 2 + 0.5], "scale_provided": max(w, h) / 200,
                        "joint_self": [[kp[3 * j] + 0.5, kp[3 * j + 1] + 0.5, kp[3 * j + 2]]
                                       for j in range(17)]})
    (root / "annotations.json").write_text(json.dumps(entries))


def test_dataset_path_cache_is_rebuilt_when_annotations_change(tmp_path, capsys):
    from pipeline.convert import records_for_dataset_path
    root = tmp_path / "my_dataset"
    root.mkdir()
    os.symlink(COCO_IMAGES, root / "images")
    coco = json.load(open(COCO_JSON))
    _custom_dataset(root, coco, 5)
    classes = os.path.join(REPO, "configs", "coco_classes.txt")
    cache = records_for_dataset_path(str(root), classes)
    assert "no cached records" in capsys.readouterr().out
    info = records.read_dataset_info(cache)
    assert info["counts"] == {"train": 5}
    fp = info["splits"]["train"]["source"]["annotations_fingerprint"]
    assert set(fp) == {"size", "mtime_ns", "sha256"}
    assert records_for_dataset_path(str(root), classes) == cache and capsys.readouterr().out == ""   # reused
    _custom_dataset(root, coco, 3)                                  # the user edits annotations.json
    records_for_dataset_path(str(root), classes)
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "annotations.json changed" in said[0]
    assert records.read_dataset_info(cache)["counts"] == {"train": 3}
    assert len(records.split_files(cache, "train")) == 1


# ----------------------------------------------------------------------------- garbage inputs


def _run(tmp_path, fmt, annotations, images, **kw):
    return convert_dataset(fmt, str(annotations), images, str(tmp_path / f"out_{fmt}"),
                           options=ConvertOptions(num_workers=1, quiet=True, **kw))


def test_keypoints_far_outside_the_image_are_skipped_and_counted(tmp_path):
    coco = json.load(open(COCO_JSON))
    ann = next(a for a in coco["annotations"] if a["keypoints"][2] > 0)
    ann["keypoints"][0] = 1e6
    path = tmp_path / "far.json"
    path.write_text(json.dumps(coco))
    info = _run(tmp_path, "coco", path, COCO_IMAGES, split="val")
    assert info["splits"]["val"]["skipped"]["by_reason"].get("keypoint_outside_image") == 1
    msg = next(r["message"] for r in info["splits"]["val"]["skipped"]["records"]
               if r["reason"] == "keypoint_outside_image")
    assert "far outside" in msg and str(ann["id"]) in msg


@pytest.mark.parametrize("value", [-5, 0, "abc", 1.5, [1]])
def test_garbage_image_sizes_are_skipped_and_counted(tmp_path, value):
    coco = json.load(open(COCO_JSON))
    used = {a["image_id"] for a in coco["annotations"] if any(a["keypoints"][2::3]) and not a.get("iscrowd")}
    img = next(i for i in coco["images"] if i["id"] in used)
    img["width"] = value
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps(coco))
    info = _run(tmp_path, "coco", path, COCO_IMAGES, split="val")
    skipped = info["splits"]["val"]["skipped"]
    assert skipped["by_reason"].get("bad_image_size", 0) >= 1
    assert any(img["file_name"] in r["message"] for r in skipped["records"]
               if r["reason"] == "bad_image_size")


def test_dlc_rows_that_disagree_with_the_header(tmp_path):
    import csv
    rows = list(csv.reader(open(DLC_CSV, newline="")))
    rows[5] = rows[5][:5]                       # too few cells
    rows[6] = rows[6] + ["1.0"]                 # one too many
    path = tmp_path / "CollectedData_x.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    info = _run(tmp_path, "dlc", path, DLC_IMAGES)
    assert info["splits"]["train"]["skipped"]["by_reason"] == {"bad_row": 2}
    assert info["counts"]["train"] == len(rows) - 3 - 2
    rows[1] = rows[1][:4]                       # a header row that is cut
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ConversionError, match="header rows have"):
        _run(tmp_path, "dlc", path, DLC_IMAGES)


@pytest.mark.parametrize("fmt", ["coco", "mpii", "custom", "dlc"])
def test_binary_annotation_file_is_one_clear_error(tmp_path, fmt):
    path = tmp_path / "garbage.bin"
    path.write_bytes(bytes(range(256)) * 8)
    kw = {"classes_path": os.path.join(REPO, "configs", "coco_classes.txt")} if fmt == "custom" else {}
    with pytest.raises(ConversionError, match="garbage.bin"):
        _run(tmp_path, fmt, path, DLC_IMAGES if fmt == "dlc" else COCO_IMAGES, **kw)
    assert not os.path.exists(tmp_path / f"out_{fmt}")
