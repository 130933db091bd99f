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

    if not args.tfrecords:
        raise UsageError("give --tfrecords DIR (or --dataset_path DIR, which run.py converts first)")
    h, w = args.model_image_size
    if h % 32 or w % 32:
        raise UsageError(f"--model_image_size {h}x{w}: height and width must be multiples of 32")
    tfrecords = args.tfrecords
    if getattr(args, "data_service", None):     # before any work: the service would wait forever
        from pipeline.data_service import DataServiceError, check_dispatcher
        try:
            check_dispatcher(args.data_service)
        except DataServiceError as e:
            raise UsageError(str(e)) from e
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
            overwrite_log_dir=getattr(args, "overwrite_log_dir", False),
            data_service=getattr(args, "data_service", None))
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
    from model.predict import PipelinePredictor, pipeline_runner, run_demo
    from model.predictor import Predictor

    video_flags = _video_flags(args)      # flag mistakes before the model is loaded
    try:
        pipeline = pipeline_runner(args.model_path)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if pipeline is not None and (args.refine or args.flip_test):
        raise UsageError(f"{args.model_path} is a frame -> keypoints pipeline with its decoder "
                         f"inside: --refine and --flip_test do not apply; drop them")
    runner = pipeline or _load_runner(args.model_path)
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
    if video_flags["track"] and runner.num_keypoints < 2:
        raise UsageError(f"--track follows the box of a subject's keypoints; {args.model_path} "
                         f"predicts {runner.num_keypoints}: use --bbox instead")
    if pipeline is not None and runner.card is None:
        raise UsageError(f"{args.model_path} carries no model card; export it again with "
                         f"python -m export --full_pipeline")
    card = _card_with_flags(args, runner, spec)
    if pipeline is not None:    # it crops the box, decodes and maps back itself
        predictor = PipelinePredictor(pipeline, card.keypoints)
    else:
        predictor = Predictor(runner, card, refine=args.refine, flip_test=args.flip_test)
    try:
        return run_demo(predictor, args.input, args.output, bbox=args.bbox,
                        conf_threshold=args.conf_threshold, max_frames=args.max_frames,
                        **video_flags)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e


def _video_flags(args) -> dict:
    """run_demo's tracking, smoothing, CSV and box-drawing arguments from the predict flags;
    UsageError for a flag without the one it tunes, or a value out of range."""
    from model.tracking import DEFAULT_TRACK_THRESHOLD, OneEuroSettings
    track = getattr(args, "track", False)
    smooth = getattr(args, "smooth", False)
    threshold = getattr(args, "track_threshold", None)
    if threshold is not None and not track:
        raise UsageError("--track_threshold tunes --track; add --track (or drop it)")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise UsageError(f"--track_threshold {threshold}: a mean confidence between 0 and 1 "
                         f"(exclusive), e.g. 0.5")
    tuned = {name: getattr(args, name, None) for name in ("min_cutoff", "beta")}
    given = [f"--{name}" for name, value in tuned.items() if value is not None]
    if given and not smooth:
        raise UsageError(f"{' and '.join(given)} tune{'s' if len(given) == 1 else ''} --smooth; "
                         f"add --smooth (or drop {' and '.join(given)})")
    settings = None
    if smooth:
        try:
            settings = OneEuroSettings(**{k: v for k, v in tuned.items() if v is not None})
        except ValueError as e:
            raise UsageError(f"--smooth: {e} (--min_cutoff > 0 Hz, --beta >= 0)") from e
    if getattr(args, "draw_box", False) and not (track or args.bbox):
        raise UsageError("--draw_box draws the box frames are read from: add --track or --bbox")
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max_frames {args.max_frames}: give a positive number of frames")
    if getattr(args, "csv", None):
        from model.predict import csv_output_path
        try:
            csv_output_path(args.input, args.csv, args.output)
        except ValueError as e:
            raise UsageError(str(e)) from e
    return {"track": track, "track_threshold": threshold or DEFAULT_TRACK_THRESHOLD,
            "smooth": settings, "csv": getattr(args, "csv", None),
            "draw_box": getattr(args, "draw_box", False)}
