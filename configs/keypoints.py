"""Keypoint definitions: names, flip pairs, skeleton and OKS sigmas, loaded from the
three text formats of the original tf-keras hourglass project (plus an optional sigma file)
and validated once.

- classes file: one keypoint name a line; order = heatmap channel order.
- match-point file: ``nameA,nameB,flip_type`` a line, flip_type ``h`` or ``v``.
- skeleton file: ``start,end,color`` a line, color ``r``, ``g`` or ``b``.
- sigma file (optional): ``name,sigma`` a line, one per keypoint: COCO OKS sigmas. Without
  one, a skeleton of exactly COCO's 17 names gets COCO's sigmas; any other has none (no OKS AP).

Blank lines and lines starting with ``#`` are ignored. Every problem raises
``KeypointSpecError`` naming the file and the line.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence

from configs.files import atomic_write_text

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))

# Spellings in files users already have, mapped to our canonical name.
NAME_ALIASES = {"plevis": "pelvis"}

COLOR_RGB = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}

# COCO's per-keypoint OKS sigmas (pycocotools' COCOeval defaults), by name.
COCO_OKS_SIGMAS = {
    "nose": 0.026, "left_eye": 0.025, "right_eye": 0.025, "left_ear": 0.035,
    "right_ear": 0.035, "left_shoulder": 0.079, "right_shoulder": 0.079,
    "left_elbow": 0.072, "right_elbow": 0.072, "left_wrist": 0.062, "right_wrist": 0.062,
    "left_hip": 0.107, "right_hip": 0.107, "left_knee": 0.087, "right_knee": 0.087,
    "left_ankle": 0.089, "right_ankle": 0.089,
}

# Skeletons shipped in configs/ as <name>_classes.txt, _match_point.txt, _skeleton.txt.
BUILTIN_DATASETS = ("coco", "mpii", "lsp")


class KeypointSpecError(ValueError):
    """A keypoint definition file is invalid; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
    """One skeleton: names in channel order, flip pairs, limbs, OKS sigmas.

    ``sigmas`` (channel order) is None when the skeleton has none; left None for exactly
    COCO's 17 names it becomes COCO's sigmas (``default_sigmas``)."""

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()          # horizontal (left/right) pairs
    vertical_flip_pairs: tuple[tuple[int, int], ...] = ()  # top/bottom pairs (`v`)
    skeleton: tuple[tuple[int, int, str], ...] = ()        # (start, end, color r/g/b)
    sigmas: Optional[tuple[float, ...]] = None             # OKS sigma per keypoint, or None

    def __post_init__(self):
        if self.sigmas is None:
            object.__setattr__(self, "sigmas", default_sigmas(self.names))
        elif len(self.sigmas) != len(self.names):
            raise KeypointSpecError(f"{len(self.sigmas)} OKS sigmas for {len(self.names)} keypoints")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_indices(self) -> tuple[int, ...]:
        """Channel permutation for a horizontal flip (identity where no pair)."""
        return _permutation(len(self.names), self.flip_pairs)

    @property
    def vertical_flip_indices(self) -> tuple[int, ...]:
        return _permutation(len(self.names), self.vertical_flip_pairs)

    @property
    def has_vertical_pairs(self) -> bool:
        return bool(self.vertical_flip_pairs)

    @property
    def oks_sigmas(self) -> Optional[tuple[float, ...]]:
        """OKS sigmas in channel order, or None: the skeleton has no sigmas (no OKS AP)."""
        return self.sigmas

    def to_dict(self) -> dict:
        """Plain data (names, not indices) for dataset_info.json and export metadata;
        ``oks_sigmas`` is {name: sigma} or None."""
        n = self.names
        return {
            "keypoint_names": list(n),
            "flip_pairs": [[n[a], n[b], "h"] for a, b in self.flip_pairs]
            + [[n[a], n[b], "v"] for a, b in self.vertical_flip_pairs],
            "skeleton": [[n[a], n[b], c] for a, b, c in self.skeleton],
            "oks_sigmas": None if self.sigmas is None else dict(zip(n, self.sigmas)),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "KeypointSpec":
        """The inverse of ``to_dict``; a dict without ``oks_sigmas`` (or with null) is read as
        a skeleton without a sigma file."""
        names = [canonical_name(x) for x in data["keypoint_names"]]
        spec = _build(
            names,
            [(a, b, t, f"{source}:flip_pairs[{i}]")
             for i, (a, b, t) in enumerate(data.get("flip_pairs", []))],
            [(a, b, c, f"{source}:skeleton[{i}]") for i, (a, b, c) in enumerate(data.get("skeleton", []))],
            source,
        )
        given = data.get("oks_sigmas")
        if given is None:
            return spec
        if not isinstance(given, dict):
            raise KeypointSpecError(f"{source}:oks_sigmas: expected {{name: sigma}} or null, got {given!r}")
        rows = [(name, value, f"{source}:oks_sigmas[{name!r}]") for name, value in given.items()]
        return dataclasses.replace(spec, sigmas=_check_sigmas(spec.names, rows, f"{source}:oks_sigmas"))

    def with_sigmas_file(self, sigmas_path: Optional[str]) -> "KeypointSpec":
        """This spec with the sigmas of ``sigmas_path`` (unchanged when None)."""
        if not sigmas_path:
            return self
        return dataclasses.replace(self, sigmas=read_sigmas(sigmas_path, self.names))

    def write(self, directory: str, prefix: str) -> dict[str, str]:
        """Write classes / match-point / skeleton files; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        n = self.names
        files = {
            "classes_path": (f"{prefix}_classes.txt", [x for x in n]),
            "matchpoint_path": (
                f"{prefix}_match_point.txt",
                [f"{n[a]},{n[b]},h" for a, b in self.flip_pairs]
                + [f"{n[a]},{n[b]},v" for a, b in self.vertical_flip_pairs],
            ),
            "skeleton_path": (f"{prefix}_skeleton.txt", [f"{n[a]},{n[b]},{c}" for a, b, c in self.skeleton]),
        }
        if self.sigmas is not None:
            files["sigmas_path"] = (f"{prefix}_sigmas.txt",
                                    [f"{name},{sigma!r}" for name, sigma in zip(n, self.sigmas)])
        out = {}
        for key, (name, lines) in files.items():
            path = os.path.join(directory, name)
            atomic_write_text(path, "".join(line + "\n" for line in lines))
            out[key] = path
        return out


def default_sigmas(names: Sequence[str]) -> Optional[tuple[float, ...]]:
    """COCO's sigmas when ``names`` are exactly COCO's 17 keypoints (any order), else None:
    no sigma is ever guessed for a keypoint COCO did not measure."""
    if len(names) == len(COCO_OKS_SIGMAS) and set(names) == set(COCO_OKS_SIGMAS):
        return tuple(COCO_OKS_SIGMAS[n] for n in names)
    return None


def _check_sigmas(names: Sequence[str], rows, source: str) -> tuple[float, ...]:
    """rows: (name, value, where) -> sigmas in channel order; every name once, each value a
    finite number > 0; errors name ``where`` (file:line)."""
    index = {n: i for i, n in enumerate(names)}
    sigmas: list[Optional[float]] = [None] * len(names)
    first: dict[str, str] = {}
    for name, value, where in rows:
        name = canonical_name(str(name))
        if name not in index:
            raise KeypointSpecError(f"{where}: unknown keypoint {name!r}; known: {', '.join(names)}")
        if name in first:
            raise KeypointSpecError(f"{where}: second sigma for {name!r} (first at {first[name]})")
        first[name] = where
        try:
            sigma = float(value)
        except (TypeError, ValueError):
            raise KeypointSpecError(f"{where}: sigma of {name!r} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(sigma) or sigma <= 0:
            raise KeypointSpecError(f"{where}: sigma of {name!r} must be a finite number > 0, got {value!r}")
        sigmas[index[name]] = sigma
    missing = [n for n, s in zip(names, sigmas) if s is None]
    if missing:
        raise KeypointSpecError(f"{source}: no sigma for {len(missing)} keypoint(s): {', '.join(missing)}; "
                                f"give one 'name,sigma' line per keypoint")
    return tuple(sigmas)


def read_sigmas(sigmas_path: str, names: Sequence[str]) -> tuple[float, ...]:
    """OKS sigmas of a sigma file (``name,sigma`` a line) in the channel order of ``names``."""
    rows, last = [], 0
    for lineno, line in _read_lines(sigmas_path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise KeypointSpecError(
                f"{sigmas_path}:{lineno}: expected 'name,sigma' (2 comma-separated fields), got {line!r}")
        rows.append((parts[0], parts[1], f"{sigmas_path}:{lineno}"))
        last = lineno
    if not rows:
        raise KeypointSpecError(f"{sigmas_path}: no 'name,sigma' line; give one per keypoint "
                                f"({', '.join(names)})")
    return _check_sigmas(names, rows, f"{sigmas_path}:{last}")


def canonical_name(name: str) -> str:
    name = name.strip()
    return NAME_ALIASES.get(name, name)


def _permutation(k: int, pairs: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(k))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


def _read_lines(path: str) -> list[tuple[int, str]]:
    if not os.path.isfile(path):
        raise KeypointSpecError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        return [(i, line.strip()) for i, line in enumerate(f, 1)
                if line.strip() and not line.strip().startswith("#")]


def _split3(path: str, lineno: int, line: str, what: str) -> tuple[str, str, str]:
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 3:
        raise KeypointSpecError(
            f"{path}:{lineno}: expected '{what}' (3 comma-separated fields), got {line!r}")
    return parts[0], parts[1], parts[2]


def _build(names, pair_rows, limb_rows, source) -> KeypointSpec:
    if not names:
        raise KeypointSpecError(f"{source}: no keypoint names")
    index = {}
    for i, name in enumerate(names):
        if name in index:
            raise KeypointSpecError(f"{source}: duplicate keypoint name {name!r}")
        index[name] = i

    def lookup(name, where):
        name = canonical_name(name)
        if name not in index:
            raise KeypointSpecError(
                f"{where}: unknown keypoint {name!r}; known: {', '.join(names)}")
        return index[name]

    h_pairs, v_pairs, seen = [], [], set()
    for a, b, kind, where in pair_rows:
        ia, ib = lookup(a, where), lookup(b, where)
        if kind not in ("h", "v"):
            raise KeypointSpecError(f"{where}: flip type must be 'h' or 'v', got {kind!r}")
        if ia == ib:
            raise KeypointSpecError(f"{where}: a keypoint cannot be its own flip partner")
        for i in (ia, ib):
            if (kind, i) in seen:
                raise KeypointSpecError(f"{where}: {names[i]!r} is in two {kind} flip pairs")
            seen.add((kind, i))
        (h_pairs if kind == "h" else v_pairs).append((ia, ib))

    limbs, seen_limbs = [], set()
    for a, b, color, where in limb_rows:
        ia, ib = lookup(a, where), lookup(b, where)
        if color not in COLOR_RGB:
            raise KeypointSpecError(f"{where}: color must be r, g or b, got {color!r}")
        if frozenset((ia, ib)) in seen_limbs:
            raise KeypointSpecError(f"{where}: duplicate limb {names[ia]}-{names[ib]}")
        seen_limbs.add(frozenset((ia, ib)))
        limbs.append((ia, ib, color))
    return KeypointSpec(tuple(names), tuple(h_pairs), tuple(v_pairs), tuple(limbs))


def read_classes(classes_path: str) -> list[str]:
    """Keypoint names of a classes file, validated (no commas, no duplicates)."""
    names, first_line = [], {}
    for lineno, line in _read_lines(classes_path):
        if "," in line:
            raise KeypointSpecError(f"{classes_path}:{lineno}: keypoint names cannot contain ',': {line!r}")
        name = canonical_name(line)
        if name in first_line:
            raise KeypointSpecError(f"{classes_path}:{lineno}: duplicate keypoint name {name!r} "
                                    f"(first on line {first_line[name]})")
        first_line[name] = lineno
        names.append(name)
    return names


def load_keypoint_spec(classes_path: str, matchpoint_path: Optional[str] = None,
                       skeleton_path: Optional[str] = None,
                       sigmas_path: Optional[str] = None) -> KeypointSpec:
    """Load and validate the files (match points, skeleton and sigmas optional)."""
    spec = spec_with_files(read_classes(classes_path), matchpoint_path, skeleton_path, classes_path)
    return spec.with_sigmas_file(sigmas_path)


def spec_with_files(names: Sequence[str], matchpoint_path: Optional[str] = None,
                    skeleton_path: Optional[str] = None, source: str = "<names>") -> KeypointSpec:
    """A spec for known keypoint names with flip pairs / limbs read from files."""
    pair_rows = []
    if matchpoint_path:
        for lineno, line in _read_lines(matchpoint_path):
            a, b, kind = _split3(matchpoint_path, lineno, line, "nameA,nameB,h|v")
            pair_rows.append((a, b, kind, f"{matchpoint_path}:{lineno}"))
    limb_rows = []
    if skeleton_path:
        for lineno, line in _read_lines(skeleton_path):
            a, b, color = _split3(skeleton_path, lineno, line, "start,end,r|g|b")
            limb_rows.append((a, b, color, f"{skeleton_path}:{lineno}"))
    return _build(list(names), pair_rows, limb_rows, source)


def builtin_paths(dataset: str) -> dict[str, str]:
    """Paths of the shipped definition files for 'coco', 'mpii' or 'lsp'."""
    if dataset not in BUILTIN_DATASETS:
        raise KeypointSpecError(f"no built-in keypoint definition for {dataset!r}; use one of "
                                f"{', '.join(BUILTIN_DATASETS)}")
    return {
        "classes_path": os.path.join(CONFIG_DIR, f"{dataset}_classes.txt"),
        "matchpoint_path": os.path.join(CONFIG_DIR, f"{dataset}_match_point.txt"),
        "skeleton_path": os.path.join(CONFIG_DIR, f"{dataset}_skeleton.txt"),
    }


def builtin_spec(dataset: str) -> KeypointSpec:
    return load_keypoint_spec(**builtin_paths(dataset))
