"""DeepLabCut labelled data (``CollectedData_<scorer>.csv``) -> one PersonRecord per animal.

- Header: DLC's 3 rows (``scorer`` / ``bodyparts`` / ``coords``) or the multi-animal 4 rows
  (``scorer`` / ``individuals`` / ``bodyparts`` / ``coords``). The image path is the first
  column, or the first columns joined by "/" in newer files (``labeled-data,m4s1,img0.png``).
- Keypoint names come from the header (the first individual's body parts, in column
  order). Individuals with other body parts (maDLC's "single" unique body parts) are not
  converted; dataset_info.json notes it.
- Empty cells and NaN = unlabelled. One example per frame and individual with at least one
  labelled point; the others are counted as ``no_labelled_keypoints``.
- Coordinates: DLC stores 0-based pixel indices; ours = value + 0.5
  (``pipeline.coords.from_pixel_index``).
- Person box: the tight box around the labelled points, each side widened to at least
  ``MIN_BOX_SIDE`` px around its centre (one labelled point has no extent); ``center``/
  ``scale`` are that box's (square of the longer side / 200) times ``--box_padding``.
  The parser adds its own 1.25 crop padding.
- Images: looked up in ``--images`` by the CSV path, then without its leading
  ``labeled-data/``, then without the video folder, then by basename. When two different
  CSV paths end up at the same file by basename, both are skipped (``ambiguous_image``).
- Skeleton: ``skeleton:`` of config.yaml (``[[a, b], ...]``, color 'r'), unless a skeleton
  file is given. Flip pairs: none, unless a match-point file is given (without pairs a
  horizontal flip augmentation swaps left/right body parts).
- Split: ``val_images`` (a file of basenames, one a line) or ``val_fraction`` (frames sorted
  by path, shuffled with ``seed``, the first round(F * n) go to "val"); otherwise all frames
  go to ``--split`` (default "train"). All individuals of a frame share its split.
"""
from __future__ import annotations

import csv
import math
import os
import random
import tempfile
from typing import Optional

import numpy as np

from configs import KeypointSpec, KeypointSpecError, load_keypoint_spec
from pipeline.coords import from_pixel_index
from pipeline.schema import PersonRecord
from pipeline.sources import (
    ConversionError,
    ReaderOptions,
    Skip,
    SourceData,
    image_ids,
    padded_center_scale,
    point_problem,
    resolve_image,
)

MIN_BOX_SIDE = 32.0   # px: the smallest side of a box derived from labelled points
CLASS_TEXT = "animal"


class _Header:
    """Column layout of a DLC CSV."""

    def __init__(self, path: str, rows: list[list[str]]):
        if not rows or not rows[0] or rows[0][0].strip().lower() != "scorer":
            raise ConversionError(f"{path}: not a DeepLabCut CSV (its first cell must be 'scorer'); "
                                  f"pass CollectedData_<scorer>.csv")
        multi = len(rows) > 1 and rows[1] and rows[1][0].strip().lower() == "individuals"
        self.num_rows = 4 if multi else 3
        if len(rows) < self.num_rows:
            raise ConversionError(f"{path}: the header has fewer than {self.num_rows} rows")
        head = rows[:self.num_rows]
        coords = head[-1]
        if coords[0].strip().lower() != "coords" or head[-2][0].strip().lower() != "bodyparts":
            raise ConversionError(f"{path}: header rows must start with scorer, "
                                  f"{'individuals, ' if multi else ''}bodyparts, coords")
        width = max(len(r) for r in head)
        if any(len(r) != width for r in head):
            raise ConversionError(f"{path}: the header rows have {[len(r) for r in head]} cells; every "
                                  f"header row must have one cell per column (re-export the CSV from "
                                  f"DeepLabCut)")
        self.width = width
        self.num_index = 1
        while self.num_index < width and not head[-1][self.num_index].strip():
            self.num_index += 1
        self.columns: dict[tuple[str, str], dict[str, int]] = {}
        for col in range(self.num_index, width):
            individual = head[1][col].strip() if multi else ""
            part, axis = head[-2][col].strip(), head[-1][col].strip().lower()
            if axis not in ("x", "y"):
                continue            # likelihood columns of machine labels
            self.columns.setdefault((individual, part), {})[axis] = col
        for (individual, part), axes in self.columns.items():
            if set(axes) != {"x", "y"}:
                raise ConversionError(f"{path}: body part {part!r} {individual} lacks an x or y column")
        individuals: list[str] = []
        for individual, _ in self.columns:
            if individual not in individuals:
                individuals.append(individual)
        if not individuals:
            raise ConversionError(f"{path}: the header names no body part x/y columns")
        self.names = [p for ind, p in self.columns if ind == individuals[0]]
        parts_of = {i: [p for ind, p in self.columns if ind == i] for i in individuals}
        self.individuals = [i for i in individuals if parts_of[i] == self.names]
        self.ignored = [i for i in individuals if i not in self.individuals]


def dlc_spec(annotations: str, names: list[str], given: Optional[KeypointSpec], config_path: Optional[str],
             matchpoint_path: Optional[str], skeleton_path: Optional[str]) -> KeypointSpec:
    """The keypoint definition of a DLC set: header names; pairs / skeleton from the given
    spec or files, else the skeleton of config.yaml."""
    if given is not None:
        if list(given.names) != list(names):
            raise ConversionError(
                f"{annotations}: the CSV header names {names} but the classes file names "
                f"{list(given.names)}; leave out --classes_path (names come from the header) or fix it")
        return given
    if matchpoint_path or skeleton_path:
        with tempfile.TemporaryDirectory() as tmp:
            classes = os.path.join(tmp, "header_classes.txt")
            with open(classes, "w", encoding="utf-8") as f:
                f.write("".join(n + "\n" for n in names))
            return load_keypoint_spec(classes, matchpoint_path, skeleton_path)
    limbs = _config_skeleton(config_path) if config_path else []
    try:
        return KeypointSpec.from_dict(
            {"keypoint_names": names, "skeleton": [[a, b, "r"] for a, b in limbs]},
            config_path or annotations)
    except KeypointSpecError as e:
        raise ConversionError(f"{e} (skeleton of {config_path})") from e


def _config_skeleton(config_path: str) -> list[tuple[str, str]]:
    import yaml
    if not os.path.isfile(config_path):
        raise ConversionError(f"{config_path}: DLC config not found; check --config")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConversionError(f"{config_path}: not valid YAML ({e})") from e
    skeleton = config.get("skeleton") or []
    out = []
    for i, pair in enumerate(skeleton):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ConversionError(f"{config_path}: skeleton[{i}] = {pair!r} is not a [a, b] pair")
        out.append((str(pair[0]), str(pair[1])))
    return out


def _read_rows(path: str) -> list[list[str]]:
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: annotation file not found; check --annotations")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ConversionError(f"{path}: not a text CSV ({e}); pass DLC's "
                              f"CollectedData_<scorer>.csv") from None
    if not rows:
        raise ConversionError(f"{path}: the CSV is empty; pass DLC's CollectedData_<scorer>.csv")
    return rows


def read_dlc(annotations: str, images_dir: str, spec: Optional[KeypointSpec], options: ReaderOptions,
             matchpoint_path: Optional[str] = None, skeleton_path: Optional[str] = None) -> SourceData:
    """Read a DLC CSV; records in CSV row order, individuals in header order."""
    rows = _read_rows(annotations)
    header = _Header(annotations, rows)
    spec = dlc_spec(annotations, header.names, spec, options.dlc_config, matchpoint_path, skeleton_path)
    data = rows[header.num_rows:]
    frames = ["/".join(c.strip() for c in r[:header.num_index] if c.strip()) for r in data]
    val = val_frames(annotations, frames, options)
    resolved = {f: _find_image(images_dir, f) for f in frames}
    by_file: dict[str, set] = {}
    for f, (_, rel) in resolved.items():
        by_file.setdefault(rel, set()).add(f)

    records: dict[str, list[PersonRecord]] = {}
    skipped: list[Skip] = []
    notes = [f"individuals {header.ignored} have other body parts than {header.names} and were "
             f"not converted"] if header.ignored else []
    half = 0
    not_selected = 0
    for row_index, (row, frame) in enumerate(zip(data, frames)):
        if val is None:
            split = options.split or "train"
        else:
            split = "val" if frame in val else "train"
        if options.split and val is not None and split != options.split:
            not_selected += 1
            continue
        path, rel = resolved[frame]
        for ind_index, individual in enumerate(header.individuals):
            record_id = row_index * len(header.individuals) + ind_index
            who = f"row {row_index + header.num_rows + 1} ({frame}{', ' + individual if individual else ''})"

            def skip(reason, message):
                return Skip(split, rel or frame, str(record_id), reason, f"{annotations}: {who}: {message}")

            if not frame:
                skipped.append(skip("bad_record", "no image path in the first column"))
                continue
            if path is None:
                skipped.append(skip("path_escape", f"image path {frame!r} leaves the image folder"))
                continue
            if len(row) != header.width:
                skipped.append(skip("bad_row", f"{len(row)} cells, the header has {header.width}; "
                                    f"fix the row (a cell too many or too few shifts every body part)"))
                continue
            if len(by_file[rel]) > 1:
                skipped.append(skip("ambiguous_image", f"{sorted(by_file[rel])} all map to {rel}; "
                                    f"give --images the folder that keeps DLC's labeled-data/<video>/ paths"))
                continue
            kp = _keypoints(row, header, individual)
            if isinstance(kp, str):
                skipped.append(skip("bad_value", kp))
                continue
            kp, n_half = kp
            half += n_half
            if not (kp[:, 2] > 0).any():
                skipped.append(skip("no_labelled_keypoints", "no labelled body part"))
                continue
            problem = point_problem(kp)
            if problem:
                skipped.append(skip(*problem))
                continue
            bbox = tight_box(kp)
            center, scale = padded_center_scale(bbox, options.box_padding)
            records.setdefault(split, []).append(PersonRecord(
                image_path=path, filename=rel, image_id=0, width=0, height=0, keypoints=kp,
                center=center, scale=scale, bbox=bbox, annotation_id=record_id, class_text=CLASS_TEXT))
    ids = image_ids([r.filename for recs in records.values() for r in recs])
    for recs in records.values():
        for r in recs:
            r.image_id = ids[r.filename]
    if not_selected:
        notes.append(f"{not_selected} frames of other splits than --split {options.split} not converted")
    sided = [n for n in spec.names if "left" in n.lower() or "right" in n.lower()]
    if sided and not spec.flip_pairs:
        notes.append(f"no flip pairs for {sided}: a horizontal flip would swap them; pass "
                     f"--matchpoint_path (lines like leftear,rightear,h) or train without flips")
    return SourceData(spec=spec, records=records, skipped=skipped, notes=notes,
                      unlabelled_points={"only_x_or_y_given": half} if half else {})


def val_frames(annotations: str, frames: list[str], options: ReaderOptions) -> Optional[frozenset]:
    """The frames (CSV paths) that go to "val"; None when no validation option is set."""
    if options.val_images and options.val_fraction is not None:
        raise ConversionError("give either --val_images or --val_fraction, not both")
    unique = sorted(set(f for f in frames if f))
    if options.val_images:
        if not os.path.isfile(options.val_images):
            raise ConversionError(f"{options.val_images}: --val_images file not found")
        with open(options.val_images, encoding="utf-8") as f:
            wanted = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
        val = {fr for fr in unique if fr in wanted or os.path.basename(fr) in wanted}
        known = set(unique) | {os.path.basename(fr) for fr in unique}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConversionError(f"{options.val_images}: {len(unknown)} names are not frames of "
                                  f"{annotations}: {unknown[:5]}; list basenames such as "
                                  f"{os.path.basename(unique[0]) if unique else 'img0000.png'}")
        return frozenset(val)
    if options.val_fraction is not None:
        if not 0.0 < options.val_fraction < 1.0:
            raise ConversionError(f"--val_fraction {options.val_fraction}: must be between 0 and 1")
        order = list(unique)
        random.Random(options.seed).shuffle(order)
        n_val = min(len(order) - 1, max(1, round(options.val_fraction * len(order))))
        return frozenset(order[:n_val])
    return None


def _find_image(images_dir: str, frame: str) -> tuple[Optional[str], str]:
    """(absolute path, path relative to images_dir) of a CSV frame path; (None, frame) when
    the path leaves the folder. Falls back to the basename when no candidate exists."""
    parts = frame.replace("\\", "/").split("/")
    candidates = ["/".join(parts[i:]) for i in range(len(parts))]
    try:
        found = [resolve_image(images_dir, c) for c in candidates if c]
    except ValueError:
        return None, frame
    for path, rel in found:
        if os.path.isfile(path):
            return path, rel
    return found[-1] if found else (None, frame)


def _keypoints(row: list[str], header: _Header, individual: str):
    """(K, 3) keypoints in our convention and the number of half-given points, or a message."""
    k = len(header.names)
    kp = np.zeros((k, 3), dtype=np.float64)
    half = 0
    for i, part in enumerate(header.names):
        cols = header.columns[(individual, part)]
        values = []
        for axis in ("x", "y"):
            col = cols[axis]
            cell = row[col].strip() if col < len(row) else ""
            try:
                values.append(float(cell) if cell else math.nan)
            except ValueError:
                return f"{part} {axis} = {cell!r} is not a number"
        finite = [math.isfinite(v) for v in values]
        if all(finite):
            kp[i, :2] = from_pixel_index(values)
            kp[i, 2] = 2
        elif any(finite):
            half += 1
    return kp, half


def tight_box(kp: np.ndarray) -> tuple[float, float, float, float]:
    """Box [x, y, w, h] around the labelled points, each side at least MIN_BOX_SIDE."""
    pts = kp[kp[:, 2] > 0, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mid, size = (lo + hi) / 2.0, np.maximum(hi - lo, MIN_BOX_SIDE)
    return (float(mid[0] - size[0] / 2), float(mid[1] - size[1] / 2), float(size[0]), float(size[1]))
