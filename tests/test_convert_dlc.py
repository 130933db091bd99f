"""DeepLabCut CSV conversion on the real open-field data (../shared/data/dlc_openfield)."""
from __future__ import annotations

import csv
import glob
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from configs import KeypointSpec, load_keypoint_spec  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline.convert import ConversionError, ConvertOptions, convert_dataset, read_source  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLC = os.path.join(REPO, "..", "shared", "data", "dlc_openfield")
CSV = os.path.join(DLC, "CollectedData_Pranav.csv")
IMAGES = os.path.join(DLC, "images")
CONFIG = os.path.join(DLC, "config.yaml")

pytestmark = pytest.mark.skipif(not os.path.isfile(CSV), reason=f"shared data not found: {CSV}")


def csv_rows() -> dict:
    """basename -> 8 floats (x, y per body part), read with the csv module."""
    with open(CSV, newline="") as f:
        rows = list(csv.reader(f))[3:]
    return {os.path.basename(r[0]): [float(v) for v in r[1:]] for r in rows}


def examples(folder: str, split: str) -> list:
    """Every person of a split as a one-person Example (``schema.person_examples``)."""
    import tensorflow as tf
    out = []
    for path in sorted(glob.glob(os.path.join(folder, f"{split}-*-of-*.tfrecord"))):
        out += [tf.train.Example.FromString(p) for r in tf.data.TFRecordDataset(path)
                for p in schema.person_examples(r.numpy())]
    return out


def values(example, key):
    f = example.features.feature[key]
    return list(getattr(f, f.WhichOneof("kind")).value)


@pytest.fixture(scope="module")
def dlc_records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dlc") / "records")
    info = convert_dataset("dlc", CSV, IMAGES, out, options=ConvertOptions(
        num_workers=1, quiet=True, dlc_config=CONFIG, val_fraction=0.25, seed=0))
    return out, info


def test_every_frame_and_point_reads_back_exactly(dlc_records):
    out, info = dlc_records
    rows = csv_rows()
    assert len(rows) == 116
    got = {}
    for split in ("train", "val"):
        for e in examples(out, split):
            name = os.path.basename(values(e, schema.FILENAME)[0].decode())
            assert name not in got
            got[name] = (split, e)
    assert sorted(got) == sorted(rows)
    assert info["counts"] == {"train": 116 - 29, "val": 29}       # round(0.25 * 116) frames
    points = 0
    for name, (split, e) in got.items():
        xy = np.asarray(rows[name], np.float64).reshape(4, 2)
        assert values(e, schema.KP_VISIBILITY) == [2, 2, 2, 2]
        points += 4
        assert np.array_equal(np.float32(values(e, schema.HG_X)), np.float32(xy[:, 0] + 0.5))
        assert np.array_equal(np.float32(values(e, schema.HG_Y)), np.float32(xy[:, 1] + 0.5))
        x, y, w, h = values(e, schema.HG_BBOX)                       # tight box, >= 32 px a side
        assert x <= xy[:, 0].min() + 0.5 + 1e-3 and x + w >= xy[:, 0].max() + 0.5 - 1e-3
        assert y <= xy[:, 1].min() + 0.5 + 1e-3 and y + h >= xy[:, 1].max() + 0.5 - 1e-3
        assert min(w, h) >= 32.0 - 1e-4
        assert values(e, schema.HG_SCALE)[0] == pytest.approx(max(w, h) / 200.0, rel=1e-6)
        assert (values(e, schema.WIDTH), values(e, schema.HEIGHT)) == ([640], [480])
        assert values(e, schema.FORMAT) == [b"png"]
        with open(os.path.join(IMAGES, name), "rb") as f:
            assert values(e, schema.ENCODED)[0] == f.read()
    assert points == 464
    assert info["keypoint_names"] == ["snout", "leftear", "rightear", "tailbase"]
    assert any("leftear" in n for n in info["splits"]["train"]["notes"])   # no flip pairs: said


def test_keypoint_files_beside_the_records(dlc_records):
    out, info = dlc_records
    spec = load_keypoint_spec(**info["keypoint_files"])
    assert spec == KeypointSpec.from_dict(info)
    assert spec.names == ("snout", "leftear", "rightear", "tailbase") and spec.skeleton == ()
    assert all(os.path.dirname(p) == os.path.abspath(out) for p in info["keypoint_files"].values())


def test_val_split_is_reproducible(tmp_path, dlc_records):
    def val_frames(**kw):
        src = read_source("dlc", CSV, IMAGES, ConvertOptions(**kw))
        return sorted(r.filename for r in src.records["val"])

    same = val_frames(val_fraction=0.25, seed=0)
    assert same == val_frames(val_fraction=0.25, seed=0)
    assert same != val_frames(val_fraction=0.25, seed=1)
    written = sorted(values(e, schema.FILENAME)[0].decode() for e in examples(dlc_records[0], "val"))
    assert written == same
    listing = tmp_path / "val.txt"
    listing.write_text("img0003.png\n\n# held out\nimg0100.png\n")
    assert val_frames(val_images=str(listing)) == ["img0003.png", "img0100.png"]
    listing.write_text("img9999.png\n")
    with pytest.raises(ConversionError, match="img9999.png"):
        val_frames(val_images=str(listing))


def test_multi_animal_header_empty_cells_and_config_skeleton(tmp_path):
    """maDLC's 4-row header with 3 index columns: one example per labelled individual."""
    rows = csv_rows()
    names = ["img0000.png", "img0001.png", "img0002.png"]
    parts = ["snout", "leftear", "rightear", "tailbase"]
    header = [["scorer", "", ""] + ["me"] * 16,
              ["individuals", "", ""] + ["mouse1"] * 8 + ["mouse2"] * 8,
              ["bodyparts", "", ""] + [p for p in parts for _ in (0, 1)] * 2,
              ["coords", "", ""] + ["x", "y"] * 8]
    body = []
    for i, n in enumerate(names):
        second = [f"{v + 100:.3f}" for v in rows[n]] if i != 1 else [""] * 8   # mouse2 absent in frame 1
        if i == 2:
            second[0] = second[1] = ""                                       # snout not labelled
        body.append(["labeled-data", "m4s1", n] + [repr(v) for v in rows[n]] + second)
    path = tmp_path / "CollectedData_me.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(header + body)
    config = tmp_path / "config.yaml"
    config.write_text("skeleton:\n- - snout\n  - tailbase\n- [leftear, rightear]\n")
    out = str(tmp_path / "out")
    info = convert_dataset("dlc", str(path), IMAGES, out, split="train",
                           options=ConvertOptions(num_workers=1, quiet=True, dlc_config=str(config)))
    assert info["counts"] == {"train": 5} and info["splits"]["train"]["images"] == 3   # one record per frame
    assert info["splits"]["train"]["skipped"]["by_reason"] == {"no_labelled_keypoints": 1}
    assert info["skeleton"] == [["snout", "tailbase", "r"], ["leftear", "rightear", "r"]]
    got = {values(e, schema.HG_ANNOTATION_ID)[0]: e for e in examples(out, "train")}
    assert sorted(got) == [0, 1, 2, 4, 5]                              # row * 2 + individual
    e = got[5]                                                         # frame 2, mouse2
    assert values(e, schema.KP_VISIBILITY) == [0, 2, 2, 2]
    expected = np.float32(np.asarray([float(f"{v + 100:.3f}") for v in rows[names[2]]]) + 0.5)
    assert np.array_equal(np.float32(values(e, schema.HG_X))[1:], expected[2::2])
    assert values(e, schema.FILENAME) == [b"img0002.png"]


def test_header_names_must_match_a_given_classes_file(tmp_path):
    classes = tmp_path / "c.txt"
    classes.write_text("snout\ntailbase\nleftear\nrightear\n")
    with pytest.raises(ConversionError, match="header names"):
        read_source("dlc", CSV, IMAGES, ConvertOptions(classes_path=str(classes)))
    pairs = tmp_path / "m.txt"
    pairs.write_text("leftear,rightear,h\n")
    src = read_source("dlc", CSV, IMAGES, ConvertOptions(matchpoint_path=str(pairs)))
    assert src.spec.flip_indices == (0, 2, 1, 3)
