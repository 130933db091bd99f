"""The TFRecord converter on the real data in ../shared/data: every value read back exactly,
bad input skipped and counted, splits added, deterministic and atomic output."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from configs import builtin_spec, load_keypoint_spec  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline.convert import ConversionError, ConvertOptions, convert_dataset, verify_dataset  # noqa: E402
from pipeline.coords import box_to_center_scale  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
COCO = os.path.join(SHARED, "coco_val_mini")
COCO_JSON = os.path.join(COCO, "annotations", "person_keypoints_val2017_mini.json")
COCO_IMAGES = os.path.join(COCO, "images")
MPII = os.path.join(SHARED, "mpii_mini")

needs_coco = pytest.mark.skipif(not os.path.isfile(COCO_JSON), reason=f"shared data not found: {COCO_JSON}")
needs_mpii = pytest.mark.skipif(not os.path.isdir(MPII), reason=f"shared data not found: {MPII}")
SERIAL = ConvertOptions(num_workers=1, quiet=True)


def read_records(folder: str, split: str) -> list:
    """Every serialized record (one per image) of a split, shards in name order."""
    import tensorflow as tf
    return [raw.numpy() for path in sorted(glob.glob(os.path.join(folder, f"{split}-*-of-*.tfrecord")))
            for raw in tf.data.TFRecordDataset(path)]


def read_split(folder: str, split: str) -> list:
    """Every person of a split as a one-person tf.train.Example (``schema.person_examples``),
    records in shard-name order."""
    import tensorflow as tf
    return [tf.train.Example.FromString(p) for raw in read_records(folder, split)
            for p in schema.person_examples(raw)]


def feat(example, key):
    f = example.features.feature[key]
    kind = f.WhichOneof("kind")
    return list(getattr(f, kind).value) if kind else []


def shard_bytes(folder: str) -> dict:
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(folder, "*.tfrecord")))}


def load_coco():
    with open(COCO_JSON) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def coco_converted(tmp_path_factory):
    if not os.path.isfile(COCO_JSON):
        pytest.skip(f"shared data not found: {COCO_JSON}")
    out = str(tmp_path_factory.mktemp("coco") / "records")
    info = convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="val", num_shards=3, options=SERIAL)
    return out, info


# ----------------------------------------------------------------------------- COCO


def test_coco_writes_one_record_per_image_holding_its_persons(coco_converted):
    """Schema 2: one Example per image, its bytes stored once, all its usable persons inside
    (per-person fields N long, per-keypoint fields N·K, the names once per person)."""
    import tensorflow as tf
    out, info = coco_converted
    data = load_coco()
    usable = [a for a in data["annotations"]
              if not a["iscrowd"] and any(v > 0 for v in a["keypoints"][2::3])]
    by_image: dict = {}
    for a in usable:
        by_image.setdefault(a["image_id"], []).append(a["id"])
    records = [tf.train.Example.FromString(r) for r in read_records(out, "val")]
    assert len(records) == len(by_image) == info["splits"]["val"]["images"] < info["counts"]["val"]
    k = len(builtin_spec("coco").names)
    for e in records:
        ids = feat(e, schema.HG_ANNOTATION_ID)
        n = len(ids)
        assert sorted(ids) == sorted(by_image[int(feat(e, schema.SOURCE_ID)[0])])
        assert feat(e, schema.VERSION) == [schema.SCHEMA_VERSION] == [2]
        assert len(feat(e, schema.ENCODED)) == 1
        for key in (schema.BBOX_XMIN, schema.AREA, schema.HG_SCALE, schema.KP_NUM, schema.CLASS_LABEL):
            assert len(feat(e, key)) == n, key
        for key in (schema.KP_X, schema.KP_Y, schema.KP_VISIBILITY, schema.HG_X, schema.KP_TEXT):
            assert len(feat(e, key)) == n * k, key
        assert len(feat(e, schema.HG_BBOX)) == 4 * n and len(feat(e, schema.HG_CENTER)) == 2 * n
    assert max(len(feat(e, schema.HG_SCALE)) for e in records) > 1     # the set has shared images



def test_coco_writes_every_usable_person_with_exact_values(coco_converted):
    out, info = coco_converted
    data = load_coco()
    anns = {a["id"]: a for a in data["annotations"]}
    images = {i["id"]: i for i in data["images"]}
    usable = [a for a in data["annotations"]
              if not a["iscrowd"] and any(v > 0 for v in a["keypoints"][2::3])]
    examples = read_split(out, "val")
    assert len(examples) == len(usable) == info["counts"]["val"]
    assert info["splits"]["val"]["skipped"]["by_reason"] == {
        "no_labelled_keypoints": len(data["annotations"]) - len(usable)}
    written_ids = sorted(int(feat(e, schema.HG_ANNOTATION_ID)[0]) for e in examples)
    assert written_ids == sorted(a["id"] for a in usable)
    for e in examples:
        ann = anns[feat(e, schema.HG_ANNOTATION_ID)[0]]
        img = images[ann["image_id"]]
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        assert np.array_equal(np.float32(feat(e, schema.HG_X)), np.float32(kp[:, 0]))
        assert np.array_equal(np.float32(feat(e, schema.HG_Y)), np.float32(kp[:, 1]))
        assert feat(e, schema.KP_VISIBILITY) == kp[:, 2].astype(int).tolist()
        assert np.allclose(feat(e, schema.KP_X), kp[:, 0] / img["width"], atol=1e-7)
        assert feat(e, schema.SOURCE_ID) == [str(img["id"]).encode()]
        assert (feat(e, schema.WIDTH), feat(e, schema.HEIGHT)) == ([img["width"]], [img["height"]])
        assert np.float32(feat(e, schema.AREA)[0]) == np.float32(ann["area"])
        assert np.array_equal(np.float32(feat(e, schema.HG_BBOX)), np.float32(ann["bbox"]))
        center, scale = box_to_center_scale(*ann["bbox"])
        assert np.array_equal(np.float32(feat(e, schema.HG_CENTER)), np.float32(center))
        assert np.float32(feat(e, schema.HG_SCALE)[0]) == np.float32(scale)
        with open(os.path.join(COCO_IMAGES, img["file_name"]), "rb") as f:
            assert feat(e, schema.ENCODED)[0] == f.read()     # original bytes, no re-encode
        assert feat(e, schema.FORMAT) == [b"jpeg"] and feat(e, schema.REENCODED) == [0]
    assert sorted(info["splits"]["val"]["shards"]) == sorted(shard_bytes(out))
    assert info["keypoint_names"] == list(builtin_spec("coco").names)
    assert info["source"]["format"] == "coco"


def test_box_padding_multiplies_the_scale(tmp_path):
    if not os.path.isfile(COCO_JSON):
        pytest.skip(f"shared data not found: {COCO_JSON}")
    from pipeline.convert import read_source
    plain = read_source("coco", COCO_JSON, COCO_IMAGES, SERIAL)
    padded = read_source("coco", COCO_JSON, COCO_IMAGES, ConvertOptions(box_padding=1.5))
    for a, b in zip(plain.records["val"], padded.records["val"]):
        assert b.scale == pytest.approx(1.5 * a.scale) and b.center == a.center and b.bbox == a.bbox


# ----------------------------------------------------------------------------- MPII


@needs_mpii
def test_mpii_mmpose_json_values(tmp_path):
    src = os.path.join(MPII, "test_mpii_subset.json")
    out = str(tmp_path / "mpii")
    info = convert_dataset("mpii", src, os.path.join(MPII, "images"), out, split="train", options=SERIAL)
    with open(src) as f:
        entries = json.load(f)
    examples = read_split(out, "train")
    assert len(examples) == len(entries) == info["counts"]["train"] == 3
    by_index = {feat(e, schema.HG_ANNOTATION_ID)[0]: e for e in examples}
    for i, entry in enumerate(entries):
        e = by_index[i]
        joints = np.asarray(entry["joints"], np.float64)
        labelled = (np.asarray(entry["joints_vis"]) > 0) & np.all(joints > 0, axis=1)
        assert feat(e, schema.KP_VISIBILITY) == np.where(labelled, 2, 0).tolist()
        expected = np.float32(np.where(labelled[:, None], joints - 0.5, 0.0))
        assert np.array_equal(np.float32(feat(e, schema.HG_X)), expected[:, 0])
        assert np.array_equal(np.float32(feat(e, schema.HG_Y)), expected[:, 1])
        cx, cy = entry["center"]
        s = entry["scale"]
        assert np.array_equal(np.float32(feat(e, schema.HG_CENTER)),
                              np.float32([cx - 0.5, cy - 0.5 + 15.0 * s]))   # mmpose's +15*scale
        assert np.float32(feat(e, schema.HG_SCALE)[0]) == np.float32(s)
        assert feat(e, schema.HG_HEAD_SIZE) == [-1.0]
        assert (feat(e, schema.WIDTH), feat(e, schema.HEIGHT)) == ([1280], [720])
        assert feat(e, schema.FILENAME) == [entry["image"].encode()]
        assert feat(e, schema.SOURCE_ID) == [str(int(entry["image"][:-4])).encode()]


@needs_mpii
def test_mpii_original_annotations_json_is_detected_by_its_keys(tmp_path):
    """The original project's MPII annotations.json: joint_self, isValidation, head boxes."""
    with open(os.path.join(MPII, "test_mpii_subset.json")) as f:
        entries = json.load(f)
    original = []
    for i, e in enumerate(entries):
        joints = [[x, y, v] if v else [1, 1, 0] for (x, y), v in zip(e["joints"], e["joints_vis"])]
        joints[3][2] = 0                                  # labelled but occluded
        original.append({"dataset": "MPI", "isValidation": int(i == 2), "img_paths": e["image"],
                         "objpos": e["center"], "scale_provided": e["scale"], "joint_self": joints,
                         "headboxes": [[100, 50], [160, 130]]})
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(original))
    out = str(tmp_path / "out")
    info = convert_dataset("mpii", str(path), os.path.join(MPII, "images"), out, options=SERIAL)
    assert info["counts"] == {"train": 2, "val": 1}
    got = {feat(e, schema.HG_ANNOTATION_ID)[0]: e for s in ("train", "val") for e in read_split(out, s)}
    for i, e in enumerate(entries):
        ex = got[i]
        vis = feat(ex, schema.KP_VISIBILITY)
        assert vis[3] == 1 and all(v == (2 if j != 3 and e["joints_vis"][j] else 0 if j != 3 else 1)
                                   for j, v in enumerate(vis))
        assert np.float32(feat(ex, schema.HG_X)[3]) == np.float32(e["joints"][3][0] - 0.5)
        cx, cy = e["center"]
        assert np.array_equal(np.float32(feat(ex, schema.HG_CENTER)),
                              np.float32([cx - 0.5, cy - 0.5 + 15.0 * e["scale"]]))
        assert np.float32(feat(ex, schema.HG_HEAD_SIZE)[0]) == np.float32(0.6 * 100.0)   # 0.6 * |(60, 80)|


# ----------------------------------------------------------------------------- bad input


@needs_coco
def test_corrupt_truncated_missing_and_resized_images_are_skipped_and_listed(tmp_path):
    data = load_coco()
    with_people = sorted({a["image_id"] for a in data["annotations"] if any(a["keypoints"][2::3])})
    names = {i["id"]: i["file_name"] for i in data["images"]}
    truncated, missing, garbage, resized = (names[i] for i in with_people[:4])
    images = tmp_path / "images"
    images.mkdir()
    for name in os.listdir(COCO_IMAGES):
        if name != missing:
            os.symlink(os.path.join(COCO_IMAGES, name), images / name)
    raw = open(os.path.join(COCO_IMAGES, truncated), "rb").read()
    (images / truncated).unlink()
    (images / truncated).write_bytes(raw[: len(raw) * 2 // 3])         # a download cut short
    (images / garbage).unlink()
    (images / garbage).write_bytes(b"<html>404 not found</html>")     # not an image at all
    for img in data["images"]:
        if img["file_name"] == resized:
            img["width"] += 1                                            # json disagrees with image
    ann_path = tmp_path / "anns.json"
    ann_path.write_text(json.dumps(data))
    out = str(tmp_path / "out")
    info = convert_dataset("coco", str(ann_path), str(images), out, split="train", options=SERIAL)

    def persons(name):
        image_id = next(i["id"] for i in data["images"] if i["file_name"] == name)
        return sum(1 for a in data["annotations"] if a["image_id"] == image_id and any(a["keypoints"][2::3]))

    reasons = info["splits"]["train"]["skipped"]["by_reason"]
    assert reasons["truncated_jpeg"] == persons(truncated)
    assert reasons["missing_image"] == persons(missing)
    assert reasons["corrupt_image"] == persons(garbage)
    assert reasons["size_mismatch"] == persons(resized)
    listed = {r["reason"]: r for r in info["splits"]["train"]["skipped"]["records"]}
    assert listed["truncated_jpeg"]["file"] == truncated and truncated in listed["truncated_jpeg"]["message"]
    assert listed["missing_image"]["file"] == missing
    usable = sum(1 for a in data["annotations"] if any(a["keypoints"][2::3]))
    lost = persons(truncated) + persons(missing) + persons(garbage) + persons(resized)
    assert info["counts"]["train"] == len(read_split(out, "train")) == usable - lost


@needs_coco
def test_coco_reader_skips_crowd_nan_negative_and_bad_annotations(tmp_path):
    from pipeline.convert import read_source
    data = load_coco()
    usable = [a for a in data["annotations"] if any(a["keypoints"][2::3])]
    crowd, nan, negative, no_box, short, escape = usable[:6]
    crowd["iscrowd"] = 1
    i = nan["keypoints"][2::3].index(2) * 3
    nan["keypoints"][i] = float("nan")
    j = negative["keypoints"][2::3].index(2) * 3
    negative["keypoints"][j + 1] = -4.0
    no_box["bbox"] = [10, 10, 0, 30]
    short["keypoints"] = short["keypoints"][:-3]
    image = next(im for im in data["images"] if im["id"] == escape["image_id"])
    image["file_name"] = "../" + image["file_name"]
    path = tmp_path / "anns.json"
    path.write_text(json.dumps(data))
    src = read_source("coco", str(path), COCO_IMAGES, ConvertOptions(split="train"))
    by_id = {s.record: s.reason for s in src.skipped}
    assert by_id[str(crowd["id"])] == "crowd" and by_id[str(nan["id"])] == "nan_coordinate"
    assert by_id[str(negative["id"])] == "negative_coordinate" and by_id[str(no_box["id"])] == "empty_box"
    assert by_id[str(short["id"])] == "wrong_keypoint_count" and by_id[str(escape["id"])] == "path_escape"
    kept = {r.annotation_id for r in src.records["train"]}
    assert kept == {a["id"] for a in usable[6:] if a["image_id"] != escape["image_id"]}


def _custom_entry(ann, img, split=0):
    """An original-project json record (1-based coordinates) from a COCO annotation."""
    kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
    joints = [[x + 0.5, y + 0.5, 1 if v == 2 else 0] if v > 0 else [1, 1, 0] for x, y, v in kp.tolist()]
    x, y, w, h = ann["bbox"]
    return {"dataset": "coco_mini", "isValidation": split, "img_paths": img["file_name"],
            "objpos": [x + w / 2 + 0.5, y + h / 2 + 0.5], "scale_provided": max(w, h) / 200.0,
            "joint_self": joints, "headboxes": [[10, 20], [40, 60]], "annotation": ann["id"]}


@needs_coco
def test_custom_json_splits_values_and_bad_records(tmp_path):
    data = load_coco()
    images = {i["id"]: i for i in data["images"]}
    usable = [a for a in data["annotations"] if any(a["keypoints"][2::3])][:6]
    entries = [_custom_entry(a, images[a["image_id"]], split=int(i >= 4)) for i, a in enumerate(usable)]
    good = len(entries)
    escape = dict(entries[0], img_paths="../annotations/" + entries[0]["img_paths"])
    nan = json.loads(json.dumps(entries[1]))
    nan["joint_self"][0] = [float("nan"), 3.0, 1]
    short = dict(entries[2], joint_self=entries[2]["joint_self"][:16])
    box_only = {k: v for k, v in entries[3].items() if k not in ("objpos", "scale_provided")}
    box_only["bbox"] = next(a["bbox"] for a in usable if a["id"] == entries[3]["annotation"])
    entries += [escape, nan, short, box_only]
    ann_path = tmp_path / "annotations.json"
    ann_path.write_text(json.dumps(entries))            # json.dumps writes NaN as NaN
    out = str(tmp_path / "out")
    classes = os.path.join(REPO, "configs", "coco_classes.txt")
    info = convert_dataset("custom", str(ann_path), COCO_IMAGES, out,
                           options=ConvertOptions(num_workers=1, quiet=True, classes_path=classes))
    assert info["counts"] == {"train": 4 + 1, "val": 2}
    skipped = {k: v["skipped"]["by_reason"] for k, v in info["splits"].items()}
    assert skipped["train"] == {"path_escape": 1, "nan_coordinate": 1, "wrong_keypoint_count": 1}
    messages = [r["message"] for r in info["splits"]["train"]["skipped"]["records"]]
    assert any("record 6" in m and "../annotations" in m for m in messages)

    by_id = {}
    for split in ("train", "val"):
        for e in read_split(out, split):
            by_id[(split, feat(e, schema.HG_ANNOTATION_ID)[0])] = e
    for i, entry in enumerate(entries[:good]):
        e = by_id[("val" if entry["isValidation"] else "train", i)]
        ann = next(a for a in usable if a["id"] == entry["annotation"])
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        assert np.array_equal(np.float32(feat(e, schema.HG_X)), np.float32(kp[:, 0]))  # 1-based - 0.5
        assert np.array_equal(np.float32(feat(e, schema.HG_Y)), np.float32(kp[:, 1]))
        assert feat(e, schema.KP_VISIBILITY) == [{0: 0, 1: 1, 2: 2}[int(v)] for v in kp[:, 2]]
        center, scale = box_to_center_scale(*ann["bbox"])
        assert np.allclose(feat(e, schema.HG_CENTER), center, atol=1e-3)
        assert np.float32(feat(e, schema.HG_SCALE)[0]) == np.float32(scale)
        assert np.float32(feat(e, schema.HG_HEAD_SIZE)[0]) == np.float32(0.6 * np.hypot(30, 40))
    box_e = by_id[("train", len(entries) - 1)]
    assert np.array_equal(np.float32(feat(box_e, schema.HG_BBOX)), np.float32(box_only["bbox"]))


@needs_coco
def test_bmp_images_are_reencoded_to_png_and_listed(tmp_path):
    import cv2
    data = load_coco()
    ann = next(a for a in data["annotations"] if any(a["keypoints"][2::3]))
    img = next(i for i in data["images"] if i["id"] == ann["image_id"])
    pixels = cv2.imread(os.path.join(COCO_IMAGES, img["file_name"]))
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "person.bmp"), pixels)
    entry = dict(_custom_entry(ann, img), img_paths="person.bmp")
    (tmp_path / "a.json").write_text(json.dumps([entry]))
    out = str(tmp_path / "out")
    classes = os.path.join(REPO, "configs", "coco_classes.txt")
    info = convert_dataset("custom", str(tmp_path / "a.json"), str(tmp_path / "images"), out,
                           options=ConvertOptions(num_workers=1, quiet=True, classes_path=classes))
    assert info["splits"]["train"]["reencoded"]["records"] == [
        {"file": "person.bmp", "record": "0", "from": "bmp", "to": "png"}]
    (e,) = read_split(out, "train")
    assert feat(e, schema.FORMAT) == [b"png"] and feat(e, schema.REENCODED) == [1]
    decoded = cv2.imdecode(np.frombuffer(feat(e, schema.ENCODED)[0], np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, pixels)                               # lossless


@needs_coco
def test_unusable_input_stops_before_anything_is_written(tmp_path):
    classes = os.path.join(REPO, "configs", "coco_classes.txt")
    opts = ConvertOptions(num_workers=1, quiet=True, classes_path=classes)
    out = tmp_path / "out"
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "broken.json").write_text('[{"img_paths": "a.jpg", ')
    data = load_coco()
    images = {i["id"]: i for i in data["images"]}
    usable = [a for a in data["annotations"] if any(a["keypoints"][2::3])][:3]
    mpii_sized = [dict(_custom_entry(a, images[a["image_id"]]), joint_self=[[5, 5, 1]] * 16) for a in usable]
    (tmp_path / "mpii_sized.json").write_text(json.dumps(mpii_sized))
    all_bad = [dict(_custom_entry(a, images[a["image_id"]]), img_paths="missing.jpg") for a in usable]
    (tmp_path / "all_missing.json").write_text(json.dumps(all_bad))
    cases = [("empty.json", COCO_IMAGES, "empty"), ("broken.json", COCO_IMAGES, "not valid json"),
             ("mpii_sized.json", COCO_IMAGES, "classes file names 17"),
             ("all_missing.json", COCO_IMAGES, "no valid record"),
             ("all_missing.json", str(tmp_path / "nowhere"), "image folder not found")]
    for name, image_dir, words in cases:
        with pytest.raises(ConversionError, match=words) as err:
            convert_dataset("custom", str(tmp_path / name), image_dir, str(out), options=opts)
        assert (name in str(err.value)) or ("nowhere" in str(err.value))
        assert not glob.glob(str(out / "*")), f"{name}: something was written"
    with pytest.raises(ConversionError, match="--classes_path"):
        convert_dataset("custom", str(tmp_path / "all_missing.json"), COCO_IMAGES, str(out))


# ----------------------------------------------------------------------------- splits, determinism, atomicity


@needs_coco
def test_adding_a_split_keeps_the_other_and_other_keypoints_are_refused(tmp_path, coco_converted):
    out = str(tmp_path / "out")
    data = load_coco()
    first_half = dict(data, annotations=data["annotations"][:30])
    (tmp_path / "train.json").write_text(json.dumps(first_half))
    train = convert_dataset("coco", str(tmp_path / "train.json"), COCO_IMAGES, out, split="train",
                            num_shards=2, options=SERIAL)
    both = convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="val", num_shards=1, options=SERIAL)
    assert both["counts"] == {"train": train["counts"]["train"], "val": coco_converted[1]["counts"]["val"]}
    assert both["splits"]["train"] == train["splits"]["train"]
    assert len(read_split(out, "train")) == train["counts"]["train"]
    # re-converting a split replaces its shards: 2 -> 1 shard, the old ones are gone
    again = convert_dataset("coco", str(tmp_path / "train.json"), COCO_IMAGES, out, split="train",
                            num_shards=1, options=SERIAL)
    assert sorted(shard_bytes(out)) == ["train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]
    assert again["counts"] == both["counts"] and verify_dataset(out) == []
    before = open(os.path.join(out, "dataset_info.json"), "rb").read()
    other = tmp_path / "classes.txt"
    other.write_text("\n".join(reversed(builtin_spec("coco").names)) + "\n")
    with pytest.raises(ConversionError, match="another keypoint definition"):
        convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="test",
                        options=ConvertOptions(num_workers=1, quiet=True, classes_path=str(other)))
    assert open(os.path.join(out, "dataset_info.json"), "rb").read() == before
    assert not glob.glob(os.path.join(out, "test-*"))
    spec = load_keypoint_spec(**{k: os.path.join(out, os.path.basename(v))
                                 for k, v in again["keypoint_files"].items()})
    assert spec == builtin_spec("coco")


@needs_coco
def test_same_input_same_bytes_serial_or_parallel(tmp_path, coco_converted):
    out = str(tmp_path / "parallel")
    convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="val", num_shards=3,
                    options=ConvertOptions(num_workers=2, quiet=True))
    assert shard_bytes(out) == shard_bytes(coco_converted[0])
    assert not glob.glob(os.path.join(out, "*.tmp-*"))


@needs_coco
def test_failed_run_leaves_the_folder_as_it_was(tmp_path, coco_converted, monkeypatch):
    import pipeline.convert as convert
    out = str(tmp_path / "out")
    shutil.copytree(coco_converted[0], out)
    stale = os.path.join(out, "val-00000-of-00003.tfrecord.tmp-999999")
    open(stale, "wb").write(b"half a shard")          # what a killed run leaves
    before = {p: open(os.path.join(out, p), "rb").read() for p in os.listdir(out) if ".tmp-" not in p}
    calls = []

    def dies_on_fifth(task, names=None):
        calls.append(task)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(task, names)

    real = convert.process_image
    monkeypatch.setattr(convert, "process_image", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset("coco", COCO_JSON, COCO_IMAGES, out, split="val", num_shards=2, options=SERIAL)
    after = {p: open(os.path.join(out, p), "rb").read() for p in os.listdir(out)}
    assert after == before                            # no temp shard, stale one removed, nothing replaced


@pytest.mark.processes
@needs_coco
def test_cli_verify_and_exit_codes(tmp_path, coco_converted):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    out = str(tmp_path / "cli")
    cmd = [sys.executable, os.path.join(REPO, "convert_to_tfrecord.py"), "--format", "coco",
           "--annotations", COCO_JSON, "--images", COCO_IMAGES, "--output", out, "--split", "val",
           "--num_shards", "3", "--num_workers", "1", "--verify", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = coco_converted[1]
    assert f"val {info['counts']['val']} persons in {info['splits']['val']['images']} images" in proc.stdout
    assert shard_bytes(out) == shard_bytes(coco_converted[0])
    # a damaged shard is found by verify
    victim = os.path.join(out, "val-00001-of-00003.tfrecord")
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[: len(raw) // 2])
    problems = verify_dataset(out)
    assert any("val-00001-of-00003" in p for p in problems)
    assert any("persons in the shards" in p for p in problems)
    # unusable input: exit 2, a message naming the file
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    cmd[cmd.index(COCO_JSON)] = str(bad)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and str(bad) in proc.stderr and "not valid json" in proc.stderr
