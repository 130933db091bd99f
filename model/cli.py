"""What run.py's three modes do, from parsed flags. Flags are checked here, before any work."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

from configs import KeypointSpec, KeypointSpecError, load_keypoint_spec
from configs.keypoints import spec_with_files


class UsageError(ValueError):
    """A bad flag or flag combination; run.py prints it and exits 2."""


def resolve_spec(args, info: Optional[dict]) -> KeypointSpec:
    """The keypoint definition: the files given on the command line, else the records' own
    (with flip pairs / skeleton / OKS sigmas from files when only those are given). Files that
    disagree with the records are refused. Without --sigmas_path the records' sigmas are kept."""
    sigmas_path = getattr(args, "sigmas_path", None)
    try:
        if args.classes_path:
            spec = load_keypoint_spec(args.classes_path, args.matchpoint_path, args.skeleton_path)
            if info is not None and not sigmas_path and list(info["keypoint_names"]) == list(spec.names):
                spec = dataclasses.replace(
                    spec, sigmas=KeypointSpec.from_dict(info, "dataset_info.json").sigmas)
        elif info is None:
            raise UsageError("no keypoint definition: pass --classes_path (and --matchpoint_path, "
                             "--skeleton_path)")
        else:
            spec = KeypointSpec.from_dict(info, "dataset_info.json")
            if args.matchpoint_path or args.skeleton_path:
                files = spec_with_files(spec.names, args.matchpoint_path, args.skeleton_path)
                spec = dataclasses.replace(
                    spec, **({"flip_pairs": files.flip_pairs,
                              "vertical_flip_pairs": files.vertical_flip_pairs}
                             if args.matchpoint_path else {}),
                    **({"skeleton": files.skeleton} if args.skeleton_path else {}))
        spec = spec.with_sigmas_file(sigmas_path)
    except KeypointSpecError as e:
        raise UsageError(str(e)) from e
    if info is not None and list(info["keypoint_names"]) != list(spec.names):
        raise UsageError(
            f"--classes_path names {spec.num_keypoints} keypoints ({', '.join(spec.names)}) but the "
            f"records were written with {len(info['keypoint_names'])} "
            f"({', '.join(info['keypoint_names'])}); use the classes file the records were made with")
    return spec


def _dataset_info(tfrecords: str) -> dict:
    from pipeline.records import read_dataset_info
    try:
        return read_dataset_info(tfrecords)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def _records_from_dataset_path(args) -> str:
    """Convert the original project's dataset folder into DATASET_PATH/tfrecords; reuse those
    records while they still match their source (annotations.json's sha256, the keypoint
    definition, the shards' listed sizes), otherwise rebuild them, printing one line why."""
    root = args.dataset_path
    annotations = os.path.join(root, "annotations.json")
    images = os.path.join(root, "images")
    if not os.path.isfile(annotations) or not os.path.isdir(images):
        raise UsageError(f"--dataset_path {root} must hold annotations.json and images/")
    if not args.classes_path:
        raise UsageError("--dataset_path needs --classes_path (the keypoint names of annotations.json)")
    cache = os.path.join(root, "tfrecords")
    try:
        spec = load_keypoint_spec(args.classes_path, args.matchpoint_path, args.skeleton_path)
    except KeypointSpecError as e:
        raise UsageError(str(e)) from e
    reason = _stale_cache_reason(cache, annotations, spec)
    if reason is None:
        return cache
    from pipeline.convert import ConversionError, convert_dataset
    from pipeline.records import INFO_NAME, JOURNAL_NAME, SHARD_RE
    print(f"{reason}: converting {annotations} to TFRecords in {cache}", flush=True)
    if os.path.isdir(cache):          # only what the converter wrote there: info, journal, shards
        import re
        for name in sorted(os.listdir(cache)):
            if name in (INFO_NAME, JOURNAL_NAME) or re.fullmatch(SHARD_RE + r"(\.tmp-\d+)?", name):
                os.remove(os.path.join(cache, name))
    try:
        convert_dataset("custom", annotations, images, cache, spec=spec)
    except (ConversionError, KeypointSpecError) as e:
        raise UsageError(str(e)) from e
    return cache


def _stale_cache_reason(cache: str, annotations: str, spec: KeypointSpec) -> Optional[str]:
    """Why the records cached in `cache` cannot be reused for `annotations` and `spec`, or None."""
    from pipeline.records import RecordsError, read_dataset_info, sha256_file, split_files
    if not os.path.isdir(cache):
        return "no cached records yet"
    try:
        info = read_dataset_info(cache)
        for split in info.get("splits") or {}:
            if info["counts"].get(split):
                split_files(cache, split, info)
    except RecordsError as e:
        return f"the cached records are unusable ({e})"
    sources = [entry.get("source") or {} for entry in (info.get("splits") or {}).values()]
    stored = [src.get("annotations_fingerprint") for src in sources]
    if not stored or any(fp is None for fp in stored):
        return "the cached records do not record which annotations.json they came from"
    now = os.stat(annotations)
    digest = sha256_file(annotations)
    if any(fp["size"] != now.st_size or fp["sha256"] != digest for fp in stored):
        return (f"{annotations} changed since the cached records were written ({stored[0]['size']} -> "
                f"{now.st_size} bytes, sha256 differs)")
    try:
        cached = KeypointSpec.from_dict(info, os.path.join(cache, "dataset_info.json"))
    except (KeyError, KeypointSpecError):
        return "its dataset_info.json holds no valid keypoint definition"
    if cached.to_dict() != spec.to_dict():
        return ("the keypoint files (--classes_path, --matchpoint_path, --skeleton_path, "
                "--sigmas_path) changed")
    return None


def parser_config(args, input_size, crop_mode: str, augment: bool):
    from pipeline.parser import ParserConfig
    overrides = {name: getattr(args, name) for name in ("sigma", "rotated_sampler")
                 if getattr(args, name, None)}
    cfg = ParserConfig(input_size=tuple(input_size), crop_mode=crop_mode, **overrides)
    if not augment:
        cfg = dataclasses.replace(cfg, rotation_prob=0.0, flip_prob=0.0, scale_range=(1.0, 1.0),
                                  translate_frac=0.0, color_jitter=0.0)
    return cfg


def train(args) -> dict:
    from model.distribute import make_strategy
    from model.hourglass import HourglassConfig
    from model.trainer import LogDirError, TrainConfig, Trainer, write_run_config

    if bool(args.tfrecords) == bool(args.dataset_path):
        raise UsageError("give exactly one of --tfrecords DIR or --dataset_path DIR")
    h, w = args.model_image_size
    if h % 32 or w % 32:
        raise UsageError(f"--model_image_size {h}x{w}: height and width must be multiples of 32")
    tfrecords = args.tfrecords or _records_from_dataset_path(args)
    info = _dataset_info(tfrecords)
    spec = resolve_spec(args, info)
    try:
        model = HourglassConfig(num_keypoints=spec.num_keypoints, num_stacks=args.num_stacks,
                                num_channels=128 if args.tiny else 256, mobile=args.mobile,
                                input_size=(h, w))
        cfg = TrainConfig(
            tfrecords=tfrecords, log_dir=args.log_dir, model=model,
            parser=parser_config(args, model.input_size, args.crop_mode, augment=not args.no_augment),
            batch_size=args.batch_size, optimizer=args.optimizer, learning_rate=args.learning_rate,
            decay_type=args.decay_type, warmup_epochs=args.warmup_epochs, init_epoch=args.init_epoch,
            total_epoch=args.total_epoch, seed=args.seed, steps_per_loop=args.steps_per_loop,
            steps_per_epoch=args.steps_per_epoch, checkpoint_steps=args.checkpoint_steps,
            mixed_precision=args.mixed_precision, jit_compile=args.jit_compile,
            foreground_weight=args.foreground_weight,
            weights_path=args.weights_path, profile_steps=args.profile_steps, verbose=not args.quiet,
            overwrite_log_dir=getattr(args, "overwrite_log_dir", False))
        cfg.validate()
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.weights_path and not os.path.exists(args.weights_path):
        raise UsageError(f"--weights_path {args.weights_path}: no such file")
    strategy = make_strategy(tpu=args.tpu, gpu_num=args.gpu_num, mixed_precision=cfg.mixed_precision)
    try:
        trainer = Trainer(cfg, strategy, spec)
    except LogDirError as e:
        raise UsageError(str(e)) from e
    if trainer.chief:
        write_run_config(cfg.log_dir, cfg, spec)
    return trainer.train()


def _card_with_flags(args, runner, records_spec: Optional[KeypointSpec]):
    """The model card the model file carries (a default one, with a notice, for a file that
    carries none), with the keypoint files and --crop_mode of the command line applied; each
    flag that differs from the card is used with one printed notice."""
    from model.evaluation import default_card
    card, notices = runner.card, []
    if card is None:
        if records_spec is None:
            raise UsageError(f"{args.model_path} carries no keypoint names (no model card inside "
                             f"it or beside it): pass --classes_path (and --skeleton_path to "
                             f"draw limbs)")
        card = default_card(runner, records_spec)
        notices.append(f"{args.model_path} carries no model card: assuming a {card.crop_mode} crop, "
                       f"padding {card.padding}, sigma {card.sigma} and the keypoints of the records")
    if records_spec is not None:
        if list(records_spec.names) != list(card.keypoints.names):
            raise UsageError(
                f"{args.model_path} predicts {card.num_keypoints} keypoints "
                f"({', '.join(card.keypoints.names)}) but the keypoint definition given has "
                f"{records_spec.num_keypoints} ({', '.join(records_spec.names)}); use records and "
                f"keypoint files made with the model's keypoints")
        card = card.replace(keypoints=records_spec)
    card, flag_notices = card.with_flags(args.model_path, crop_mode=getattr(args, "crop_mode", None))
    for note in notices + flag_notices:
        print(f"run.py {args.mode}: note: {note}", file=sys.stderr, flush=True)
    return card


def _load_runner(path: str):
    from model.runner import load_runner
    try:
        return load_runner(path)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def evaluate(args) -> dict:
    from model.evaluation import evaluate_model

    info = _dataset_info(args.tfrecords)
    spec = resolve_spec(args, info)
    runner = _load_runner(args.model_path)
    if runner.num_keypoints != spec.num_keypoints:
        raise UsageError(f"{args.model_path} predicts {runner.num_keypoints} keypoints, the records "
                         f"have {spec.num_keypoints}")
    card = _card_with_flags(args, runner, spec)
    annotations = args.annotations
    if annotations is not None and not os.path.isfile(annotations):
        raise UsageError(f"--annotations {annotations}: no such file (leave it out to score OKS AP "
                         f"against the records themselves)")
    source = info.get("splits", {}).get(args.split, {}).get("source") or {}
    note = None
    if annotations is None and source.get("format") == "coco":
        annotations = source.get("annotations")
        if annotations and not os.path.isfile(annotations):
            note = (f"the records' source json {annotations} is gone; OKS AP is scored against the "
                    f"records (crowd and unlabelled persons of the json are not in them)")
            annotations = None
    metrics = evaluate_model(
        runner, args.tfrecords, args.split, card=card, batch_size=args.batch_size,
        flip_test=args.flip_test, refine=args.refine, result_json=args.result_json,
        annotations=annotations, save_result=args.save_result)
    metrics["model_card"] = runner.card_source
    if note:
        metrics["coco_note"] = note
    if "coco_unavailable" in metrics:
        print(f"run.py eval: no OKS AP: {metrics['coco_unavailable']}", file=sys.stderr)
    if "pck_torso_unavailable" in metrics:
        print(f"run.py eval: no torso PCK: {metrics['pck_torso_unavailable']}", file=sys.stderr)
    if args.metrics_json:
        from configs import atomic_write_json
        atomic_write_json(args.metrics_json, metrics)
    return metrics


def predict(args) -> dict:
    from model.predict import run_demo
    from model.predictor import Predictor

    runner = _load_runner(args.model_path)
    spec = None
    if args.classes_path:
        spec = resolve_spec(args, None)
    elif runner.card is not None and (args.matchpoint_path or args.skeleton_path
                                      or getattr(args, "sigmas_path", None)):
        try:
            files = spec_with_files(runner.card.keypoints.names, args.matchpoint_path,
                                    args.skeleton_path)
        except KeypointSpecError as e:
            raise UsageError(str(e)) from e
        spec = dataclasses.replace(
            runner.card.keypoints,
            **({"flip_pairs": files.flip_pairs, "vertical_flip_pairs": files.vertical_flip_pairs}
               if args.matchpoint_path else {}),
            **({"skeleton": files.skeleton} if args.skeleton_path else {}))
    if spec is not None and spec.num_keypoints != runner.num_keypoints:
        raise UsageError(f"{args.model_path} predicts {runner.num_keypoints} keypoints but the "
                         f"classes file names {spec.num_keypoints}")
    card = _card_with_flags(args, runner, spec)
    predictor = Predictor(runner, card, refine=args.refine, flip_test=args.flip_test)
    try:
        return run_demo(predictor, args.input, args.output, bbox=args.bbox,
                        conf_threshold=args.conf_threshold, max_frames=args.max_frames)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
