"""Leeds Sports Pose (LSP) and LSP Extended (LSPET) ``joints.mat`` -> one PersonRecord per image.

- Layouts, told apart by the array's shape (the file says nothing else):
  LSP ``(3, K, N)``, where flag **0** marks a visible joint, images ``im0001.jpg``...;
  LSPET ``(K, 3, N)``, where flag **1** marks a visible joint, images ``im00001.jpg``....
  Any other shape is refused with the two expected ones. The layout read is noted in
  dataset_info.json and printed by the converter.
- Coordinates are MATLAB 1-based pixel indices, as MPII's (nothing in the data states the
  origin): ours = value - 0.5 (``pipeline.coords``).
- An invisible joint is unlabelled (v=0): its coordinates are junk (often negative). A joint
  flagged visible with a non-finite or negative coordinate is unlabelled too and counted
  under ``unlabelled_points``. Every other joint is v=2.
- Person box: the box of the labelled joints, each side at least 32 px, as for DeepLabCut
  (``dlc.tight_box``); centre/scale of its square times ``--box_padding`` (the parser adds
  its own 1.25 crop padding).
- Entry i (0-based) is image ``im{i+1:04d}.jpg`` (LSP) or ``im{i+1:05d}.jpg`` (LSPET); when
  none of the layout's names exist but the other numbering's do, that one is used (and noted).
  An entry whose image file is absent is skipped as ``missing_image`` (a folder may hold part
  of the set); one with no visible joint as ``no_labelled_keypoints``.
- Split: ``--val_images`` (file names, one a line) or ``--val_fraction`` (seeded) put entries in
  "val" and the rest in "train"; otherwise every entry goes to ``--split`` (default "train").
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from configs import KeypointSpec
from pipeline.coords import from_one_based
from pipeline.schema import PersonRecord
from pipeline.sources import ConversionError, ReaderOptions, Skip, SourceData, padded_center_scale
from pipeline.sources.dlc import tight_box, val_frames

LAYOUTS = {   # name: (image-name digits, flag value of a visible joint)
    "lsp": (4, 0),
    "lspet": (5, 1),
}


def load_joints(path: str, num_keypoints: int) -> tuple[np.ndarray, str]:
    """(joints [N, K, 3] as x, y, visible (bool as 0/1), layout name) of a joints.mat."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: joints.mat not found; check --annotations")
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        raise ConversionError(f"{path}: not a readable MATLAB .mat file ({e}); pass LSP's or "
                              f"LSPET's joints.mat") from e
    if "joints" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ConversionError(f"{path}: no 'joints' array (found {keys}); pass LSP's or LSPET's "
                              f"joints.mat")
    joints = np.asarray(mat["joints"])
    k = num_keypoints
    expected = f"(3, {k}, N) (LSP: flag 0 = visible) or ({k}, 3, N) (LSPET: flag 1 = visible)"
    if joints.ndim != 3 or not np.issubdtype(joints.dtype, np.number):
        raise ConversionError(f"{path}: 'joints' has shape {joints.shape} ({joints.dtype}); expected "
                              f"{expected}")
    if joints.shape[:2] == (3, k):
        layout, data = "lsp", np.transpose(joints, (2, 1, 0))
    elif joints.shape[:2] == (k, 3):
        layout, data = "lspet", np.transpose(joints, (2, 0, 1))
    else:
        raise ConversionError(
            f"{path}: 'joints' has shape {joints.shape}; expected {expected} for the {k} keypoints "
            f"of the classes file: use LSP's or LSPET's joints.mat and configs/lsp_classes.txt")
    data = data.astype(np.float64)
    visible_flag = LAYOUTS[layout][1]
    data[:, :, 2] = (data[:, :, 2] == visible_flag).astype(np.float64)
    return data, layout


def image_name(index: int, digits: int) -> str:
    return f"im{index + 1:0{digits}d}.jpg"


def _numbering(images_dir: str, layout: str, count: int) -> tuple[int, Optional[str]]:
    """Digits of the image names, and a note when the other numbering had to be used."""
    digits = LAYOUTS[layout][0]
    other = 9 - digits

    def found(d):
        return sum(os.path.isfile(os.path.join(images_dir, image_name(i, d))) for i in range(count))
    if found(digits) == 0 and found(other) > 0:
        return other, (f"no image named like {image_name(0, digits)} in {images_dir}; used "
                       f"{image_name(0, other)}-style names instead")
    return digits, None


def read_lsp(annotations: str, images_dir: str, spec: KeypointSpec, options: ReaderOptions) -> SourceData:
    """Read a joints.mat; records in entry order."""
    joints, layout = load_joints(annotations, spec.num_keypoints)
    count = joints.shape[0]
    digits, numbering_note = _numbering(images_dir, layout, count)
    names = [image_name(i, digits) for i in range(count)]
    val = val_frames(annotations, names, options)
    if options.split and val is not None:
        raise ConversionError("give either --split or --val_images / --val_fraction, not both")
    records: dict[str, list[PersonRecord]] = {}
    skipped: list[Skip] = []
    junk = 0
    for index, name in enumerate(names):
        split = ("val" if name in val else "train") if val is not None else (options.split or "train")

        def skip(reason, message):
            return Skip(split, name, str(index), reason, f"{annotations}: entry {index + 1} ({name}): "
                        f"{message}")

        path = os.path.join(os.path.abspath(images_dir), name)
        if not os.path.isfile(path):
            skipped.append(skip("missing_image", f"image file not found: {path}"))
            continue
        xy, visible = joints[index, :, :2], joints[index, :, 2] > 0
        usable = np.all(np.isfinite(xy), axis=1) & np.all(xy > 0, axis=1)
        junk += int((visible & ~usable).sum())
        labelled = visible & usable
        if not labelled.any():
            skipped.append(skip("no_labelled_keypoints", "no visible joint"))
            continue
        kp = np.zeros((spec.num_keypoints, 3))
        kp[labelled, :2] = from_one_based(xy[labelled])
        kp[labelled, 2] = 2.0
        bbox = tight_box(kp)
        center, scale = padded_center_scale(bbox, options.box_padding)
        records.setdefault(split, []).append(PersonRecord(
            image_path=path, filename=name, image_id=index + 1, width=0, height=0, keypoints=kp,
            center=center, scale=scale, bbox=bbox, annotation_id=index))
    shape = "(3, K, N), flag 0 = visible" if layout == "lsp" else "(K, 3, N), flag 1 = visible"
    notes = [f"read {annotations} as the {layout.upper()} layout {shape}: {count} entries"]
    if numbering_note:
        notes.append(numbering_note)
    return SourceData(spec=spec, records=records, skipped=skipped, notes=notes,
                      unlabelled_points={"visible_flag_with_bad_coordinate": junk} if junk else {})

