"""What a training run keeps in its log dir besides models: its identity and settings.

- `run_identity(cfg, spec, info, steps_per_epoch)`: what makes two launches the same run
  (written to `run_identity.json` before the first checkpoint); `check_log_dir` refuses a log
  dir that holds another run (`LogDirError`, run.py exits 2).
- `write_run_config`: the whole `TrainConfig` tree as `run_config.json`.
- `clear_run_outputs` (--overwrite_log_dir) and `purge_after_step` (before a resumed run
  continues: drop what the stopped run wrote after its checkpoint).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
from typing import TYPE_CHECKING

import tensorflow as tf

from configs import KeypointSpec, atomic_write_text
from configs.files import remove_path
from model.card import metadata_path

if TYPE_CHECKING:
    from model.trainer import TrainConfig


class LogDirError(ValueError):
    """The log dir holds another run (or outputs of unknown origin); run.py exits 2."""


def write_run_config(log_dir: str, cfg: TrainConfig, spec: KeypointSpec) -> None:
    """The run's settings beside its outputs (plain json)."""
    os.makedirs(log_dir, exist_ok=True)
    data = dataclasses.asdict(cfg)
    data["keypoints"] = spec.to_dict()
    atomic_write_text(os.path.join(log_dir, "run_config.json"), json.dumps(data, indent=2, default=str))


# ------------------------------------------------------------------ run identity and resume
IDENTITY_NAME = "run_identity.json"
# 2: the TrainConfig tree (model.*, parser.*); 1 held the model's fields at the top level.
IDENTITY_VERSION = 2
# Settings that may differ when a run resumes: how long it runs (total_epoch), how it reports,
# how often it checkpoints, where the records lie (their content is hashed instead),
# compilation and --rotated_sampler. Everything else in TrainConfig is the run's identity.
RESUMABLE_SETTINGS = ("tfrecords", "log_dir", "total_epoch", "steps_per_loop", "checkpoint_steps",
                      "jit_compile", "keep_best", "num_summary_images", "profile_steps",
                      "verbose", "overwrite_log_dir", "data_service")


def run_identity(cfg: TrainConfig, spec: KeypointSpec, info: dict, steps_per_epoch: int) -> dict:
    """What makes two launches the same run: the records' dataset_info.json (sha256 of its
    content), the keypoint definition, the config tree (model, parser, optimizer and loop
    settings) but RESUMABLE_SETTINGS and parser.rotated_sampler, the resolved steps per epoch."""
    import hashlib
    data = dataclasses.asdict(cfg)
    for name in RESUMABLE_SETTINGS:
        data.pop(name, None)
    data["parser"].pop("rotated_sampler", None)   # how rotated crops are warped, not what
    data["steps_per_epoch"] = int(steps_per_epoch)
    data["keypoints"] = spec.to_dict()
    data["records_sha256"] = hashlib.sha256(
        json.dumps(_records_content(info), sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return {"version": IDENTITY_VERSION, **json.loads(json.dumps(data, sort_keys=True, default=str))}


def _records_content(info: dict) -> dict:
    """What identifies the records' content: per split its shard names and sha256 when the
    converter recorded them (so a moved or re-converted identical set is the same), else the
    whole dataset_info.json."""
    splits = info.get("splits") or {}
    if splits and all(isinstance(v, dict) and v.get("shard_sha256") for v in splits.values()):
        return {"keypoint_names": info["keypoint_names"], "counts": info["counts"],
                "splits": {k: {"shards": v.get("shards"), "shard_sha256": v["shard_sha256"]}
                           for k, v in splits.items()}}
    return info


def _identity_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            if key == "records_sha256":
                out.append(f"records (dataset_info.json content, sha256 {str(a)[:12]} -> {str(b)[:12]})")
            elif key == "keypoints":
                out.append("keypoint definition")
            else:
                out.append(f"{prefix}{key} {json.dumps(a)} -> {json.dumps(b)}")
    return out


def _has_run_outputs(log_dir: str) -> list[str]:
    """The outputs of a training run found in log_dir (names relative to it)."""
    found = [name for name in ("checkpoints/checkpoint", "val.txt", "final.keras", "train",
                               "validation") if os.path.exists(os.path.join(log_dir, name))]
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(log_dir, "ep*-val_pck*.keras")))
    return found


def check_log_dir(log_dir: str, identity: dict, overwrite: bool = False) -> None:
    """Pass when log_dir holds no run outputs (an identity alone, from a launch that failed
    before training, does not count) or holds this same run (resume); LogDirError naming the
    differences and the fix otherwise. overwrite: always pass."""
    outputs = _has_run_outputs(log_dir)
    if overwrite or not outputs:
        return
    path = os.path.join(log_dir, IDENTITY_NAME)
    fix = (f"use a new --log_dir, or add --overwrite_log_dir to delete that run's outputs in "
           f"{log_dir} and start over")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise LogDirError(f"{path} is unreadable ({e}); {fix}") from e
        if old.get("version") != identity.get("version"):
            raise LogDirError(
                f"--log_dir {log_dir} holds a run whose {IDENTITY_NAME} has layout version "
                f"{old.get('version')} (this trainer writes {identity.get('version')}), so it cannot "
                f"be checked to be this run; {fix}")
        if old != identity:
            diff = _identity_differences(old, identity)
            raise LogDirError(
                f"--log_dir {log_dir} holds another run: it differs in {'; '.join(diff)}. Resuming "
                f"it would continue that run's checkpoints with other data or settings; {fix} "
                f"(a resumed run may change only --total_epoch, --steps_per_loop, "
                f"--checkpoint_steps, --jit_compile, --rotated_sampler, --profile_steps, --quiet "
                f"and where the same records lie)")
        return
    raise LogDirError(f"--log_dir {log_dir} holds outputs of a run with no {IDENTITY_NAME} "
                      f"({', '.join(outputs[:4])}), so it cannot be checked to be this run; {fix}")


def write_run_identity(log_dir: str, identity: dict) -> None:
    os.makedirs(log_dir, exist_ok=True)
    atomic_write_text(os.path.join(log_dir, IDENTITY_NAME), json.dumps(identity, indent=2) + "\n")


def clear_run_outputs(log_dir: str) -> list[str]:
    """--overwrite_log_dir: delete what a training run writes into log_dir (checkpoints,
    summaries, val.txt, best and final models with their json, run_config/identity);
    other files are left alone. Returns the names removed."""
    removed = []
    for name in ("checkpoints", "train", "validation", "profile"):
        if os.path.isdir(os.path.join(log_dir, name)):
            shutil.rmtree(os.path.join(log_dir, name))
            removed.append(name)
    models = glob.glob(os.path.join(log_dir, "ep*-val_pck*.keras")) + [os.path.join(log_dir, "final.keras")]
    files = ["val.txt", "run_config.json", IDENTITY_NAME] + [os.path.basename(p) for p in models] \
        + [os.path.basename(metadata_path(p)) for p in models]
    for name in files:
        if os.path.isfile(os.path.join(log_dir, name)):
            os.remove(os.path.join(log_dir, name))
            removed.append(name)
    return removed


def purge_after_step(log_dir: str, step: int, epochs_done: int) -> dict:
    """Before a run continues from `step` (the restored checkpoint; 0 when none): drop what a
    killed run wrote after it, which would otherwise appear twice: val.txt lines of epochs
    > epochs_done, best models of those epochs, TensorBoard events with a step > `step`
    (event files rewritten atomically). Returns counts of what was dropped."""
    dropped = {"val_lines": 0, "best_models": 0, "events": 0}
    val = os.path.join(log_dir, "val.txt")
    if os.path.isfile(val):
        with open(val, encoding="utf-8") as f:
            lines = f.read().splitlines()
        keep = [ln for ln in lines
                if not ((m := re.match(r"Epoch (\d+):", ln)) and int(m.group(1)) > epochs_done)]
        if len(keep) != len(lines):
            atomic_write_text(val, "".join(ln + "\n" for ln in keep))
            dropped["val_lines"] = len(lines) - len(keep)
    for path in glob.glob(os.path.join(log_dir, "ep*-val_pck*.keras")):
        m = re.match(r"ep(\d+)-", os.path.basename(path))
        if m and int(m.group(1)) > epochs_done:
            for stale in (path, metadata_path(path)):
                remove_path(stale)
            dropped["best_models"] += 1
    for sub in ("train", "validation"):
        for path in sorted(glob.glob(os.path.join(log_dir, sub, "*tfevents*"))):
            dropped["events"] += _truncate_event_file(path, step)
    return dropped


def _truncate_event_file(path: str, step: int) -> int:
    """Rewrite an event file without its events of step > `step` (and without a torn last
    record); the file is replaced atomically, untouched when nothing is dropped."""
    tmp = os.path.join(os.path.dirname(path), f".rewrite-{os.getpid()}")   # no 'tfevents': unseen
    dropped, damaged = 0, False
    with tf.io.TFRecordWriter(tmp) as writer:
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                if event.step > step:
                    dropped += 1
                else:
                    writer.write(event.SerializeToString())
        except tf.errors.DataLossError:
            damaged = True
    if dropped or damaged:
        os.replace(tmp, path)
    else:
        os.remove(tmp)
    return dropped
