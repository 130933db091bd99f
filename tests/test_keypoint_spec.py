"""Keypoint definition files (configs/): the shipped ones load, every kind of bad file is
refused with its file and line, flip permutations are involutions."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import KeypointSpec, KeypointSpecError, builtin_paths, builtin_spec, load_keypoint_spec

COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]


@pytest.mark.parametrize("dataset,counts", [("coco", (17, 8, 19)), ("mpii", (16, 6, 15))])
def test_shipped_files_load(dataset, counts):
    spec = builtin_spec(dataset)
    assert (spec.num_keypoints, len(spec.flip_pairs), len(spec.skeleton)) == counts
    assert not spec.has_vertical_pairs
    for a, b in spec.flip_pairs:     # every pair is a left/right pair of the same part
        left, right = sorted((spec.names[a], spec.names[b]))
        assert left.replace("left", "") == right.replace("right", "")
    if dataset == "coco":
        assert list(spec.names) == COCO_NAMES
        assert spec.oks_sigmas[0] == 0.026 and spec.oks_sigmas[-1] == 0.089


def test_plevis_spelling_of_the_original_mpii_files_is_accepted(tmp_path):
    paths = builtin_paths("mpii")
    classes = tmp_path / "mpii_classes.txt"
    classes.write_text(open(paths["classes_path"]).read().replace("pelvis", "plevis"))
    skeleton = tmp_path / "mpii_skeleton.txt"
    skeleton.write_text(open(paths["skeleton_path"]).read().replace("pelvis", "plevis"))
    assert "plevis" in classes.read_text() and "plevis" in skeleton.read_text()
    spec = load_keypoint_spec(str(classes), paths["matchpoint_path"], str(skeleton))
    assert spec == builtin_spec("mpii")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD = [  # (which file is bad, its text, the line the error must name, words in the message)
    ("classes", "# names\nnose\nleft_eye\nnose\n", 4, "duplicate"),
    ("classes", "nose\nleft_eye,right_eye\n", 2, "','"),
    ("matchpoint", "left_eye,right_eye,h\nleft_ear,right_nose,h\n", 2, "unknown keypoint 'right_nose'"),
    ("matchpoint", "\n\nleft_eye,right_eye,x\n", 3, "flip type"),
    ("matchpoint", "left_eye,right_eye\n", 1, "3 comma-separated"),
    ("matchpoint", "left_eye,right_eye,h\nleft_eye,nose,h\n", 2, "two h flip pairs"),
    ("skeleton", "nose,left_eye,r\nnose,left_toe,b\n", 2, "unknown keypoint 'left_toe'"),
    ("skeleton", "nose,left_eye,y\n", 1, "color"),
    ("skeleton", "nose,left_eye,r,3\n", 1, "3 comma-separated"),
    ("skeleton", "nose,left_eye,r\nleft_eye,nose,b\n", 2, "duplicate limb"),
]


@pytest.mark.parametrize("which,text,line,words", BAD)
def test_bad_files_name_file_and_line(tmp_path, which, text, line, words):
    files = {
        "classes": _write(tmp_path, "classes.txt", "nose\nleft_eye\nright_eye\nleft_ear\nright_ear\n"),
        "matchpoint": _write(tmp_path, "match.txt", "left_eye,right_eye,h\n"),
        "skeleton": _write(tmp_path, "skeleton.txt", "nose,left_eye,r\n"),
    }
    files[which] = _write(tmp_path, f"bad_{which}.txt", text)
    with pytest.raises(KeypointSpecError) as err:
        load_keypoint_spec(files["classes"], files["matchpoint"], files["skeleton"])
    assert f"{files[which]}:{line}:" in str(err.value)
    assert words in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(KeypointSpecError, match="not found"):
        load_keypoint_spec(str(tmp_path / "nope.txt"))
    with pytest.raises(KeypointSpecError, match="no keypoint names"):
        load_keypoint_spec(_write(tmp_path, "c.txt", "# only a comment\n\n"))


@pytest.mark.parametrize("dataset", ["coco", "mpii"])
def test_round_trips(tmp_path, dataset):
    spec = builtin_spec(dataset)
    assert KeypointSpec.from_dict(spec.to_dict()) == spec
    assert load_keypoint_spec(**spec.write(str(tmp_path), "x")) == spec


@st.composite
def pairings(draw):
    k = draw(st.integers(1, 24))
    order = draw(st.permutations(range(k)))
    n_h = draw(st.integers(0, k // 2))
    n_v = draw(st.integers(0, k // 2))
    h = [(order[2 * i], order[2 * i + 1]) for i in range(n_h)]
    order_v = draw(st.permutations(range(k)))
    v = [(order_v[2 * i], order_v[2 * i + 1]) for i in range(n_v)]
    return k, h, v


@settings(max_examples=60, deadline=None)
@given(pairings())
def test_flip_indices_are_involutions(tmp_path_factory, case):
    k, h, v = case
    names = [f"kp{i}" for i in range(k)]
    d = tmp_path_factory.mktemp("spec")
    classes = _write(d, "c.txt", "".join(n + "\n" for n in names))
    match = _write(d, "m.txt", "".join(f"{names[a]},{names[b]},h\n" for a, b in h)
                   + "".join(f"{names[a]},{names[b]},v\n" for a, b in v))
    spec = load_keypoint_spec(classes, match)
    for perm, pairs in ((spec.flip_indices, h), (spec.vertical_flip_indices, v)):
        assert sorted(perm) == list(range(k))
        assert all(perm[perm[i]] == i for i in range(k))
        for a, b in pairs:
            assert perm[a] == b and perm[b] == a
        paired = {i for p in pairs for i in p}
        assert all(perm[i] == i for i in range(k) if i not in paired)
    assert spec.has_vertical_pairs == bool(v)
    for dataset in ("coco", "mpii"):
        perm = builtin_spec(dataset).flip_indices
        assert all(perm[perm[i]] == i for i in range(len(perm)))
