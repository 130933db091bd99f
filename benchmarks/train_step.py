"""Training-loop throughput: the real input pipeline vs one cached in-memory batch.

    python -m benchmarks.train_step [--tfrecords DIR] [--model_image_size 256x256]
        [--num_stacks 2] [--mobile] [--tiny] [--batch_size 16] [--steps 20]
        [--variants fp32 fp32_xla mixed mixed_xla]

Both measurements use the same `Trainer` train function (`steps_per_loop` steps per
`tf.function` call under the strategy run.py would pick); the cached run feeds one batch
from memory over and over, so `ratio = real / cached` below 1 means the input pipeline is
the bottleneck. Without --tfrecords a small synthetic set is generated in a temporary folder.
Prints one line per variant, the last one `ratio: X` for the first variant.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _synthetic_records(folder: str) -> str:
    from pipeline.convert import convert_dataset
    from pipeline.synthetic import generate_dataset
    raw = os.path.join(folder, "raw")
    generate_dataset(raw, num_train=256, num_val=16, image_size=(256, 256), seed=0)
    out = os.path.join(folder, "records")
    for split in ("train", "val"):
        convert_dataset("coco", os.path.join(raw, "annotations", f"person_keypoints_{split}.json"),
                        os.path.join(raw, "images", split), out, split=split, num_shards=2)
    return out


def measure(trainer, steps: int, cached: bool) -> float:
    """Examples per second over `steps` steps after one warm-up call."""
    import tensorflow as tf
    dist = trainer._distributed(trainer.train_pattern, training=True)
    if cached:
        batch = next(iter(trainer._dataset_fn(trainer.train_pattern, True)(None)))
        dist = trainer.strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch).repeat())
    iterator = iter(dist)
    n = tf.constant(steps)
    trainer._train_loop(iterator, n)            # trace + warm up
    start = time.perf_counter()
    loss, _ = trainer._train_loop(iterator, n)
    float(loss.numpy())
    return steps * trainer.cfg.batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    import keras
    import tensorflow as tf

    from configs import KeypointSpec
    from model.distribute import make_strategy
    from model.hourglass import HourglassConfig
    from model.trainer import TrainConfig, Trainer
    from pipeline.parser import ParserConfig
    from pipeline.records import read_dataset_info

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tfrecords")
    p.add_argument("--model_image_size", default="256x256")
    p.add_argument("--num_stacks", type=int, default=2)
    p.add_argument("--mobile", action="store_true")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", nargs="+", default=["fp32"],
                   choices=["fp32", "fp32_xla", "mixed", "mixed_xla"])
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.model_image_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        records = args.tfrecords or _synthetic_records(tmp)
        spec = KeypointSpec.from_dict(read_dataset_info(records))
        strategy = make_strategy()
        device = ", ".join(d.name for d in tf.config.list_logical_devices("GPU")) or "CPU"
        print(f"device: {device}; replicas: {strategy.num_replicas_in_sync}; model: "
              f"{args.num_stacks} stack(s), {'mobile ' if args.mobile else ''}"
              f"{128 if args.tiny else 256} ch, {h}x{w}; batch {args.batch_size}")
        first_ratio = None
        for variant in args.variants:
            mixed = variant.startswith("mixed")
            cfg = TrainConfig(
                tfrecords=records, log_dir=os.path.join(tmp, f"logs_{variant}"),
                model=HourglassConfig(num_keypoints=spec.num_keypoints, num_stacks=args.num_stacks,
                                      num_channels=128 if args.tiny else 256, mobile=args.mobile,
                                      input_size=(h, w)),
                parser=ParserConfig(input_size=(h, w)), batch_size=args.batch_size,
                optimizer="adam", learning_rate=1e-4, total_epoch=1, steps_per_loop=args.steps,
                mixed_precision=mixed, jit_compile=variant.endswith("xla"), verbose=False)
            trainer = Trainer(cfg, make_strategy(mixed_precision=mixed), spec)
            real = measure(trainer, args.steps, cached=False)
            cached = measure(trainer, args.steps, cached=True)
            ratio = real / cached
            first_ratio = ratio if first_ratio is None else first_ratio
            print(f"{variant}: real_pipeline {real:.1f} examples/s, cached_batch {cached:.1f} "
                  f"examples/s, ratio {ratio:.2f}", flush=True)
        keras.mixed_precision.set_global_policy("float32")
        print(f"ratio: {first_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
