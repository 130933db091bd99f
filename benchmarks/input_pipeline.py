"""Input pipeline throughput: the full train pipeline against a read+decode floor.

(a) floor: read TFRecords + parse the Example + decode the whole JPEG + a plain crop-resize
    of the padded person box to the input size (``tf.image.crop_and_resize`` straight from
    the uint8 image, rounded to uint8 like the full pipeline's output);
(b) full: the train pipeline (``Parser.decode`` + ``Parser.parse_train``: the JPEG decoded
    only inside the window the crop reads, one affine warp of that window,
    rotation/scale/flip/translation, colour jitter, 17 Gaussian heatmaps at 256x256 input).
    Rotated crops (``rotation_prob``, 0.6) use ImageProjectiveTransformV3, about 2.5x the
    cost of crop_and_resize per output pixel; the others crop_and_resize.
Both run through the same ``InputReader`` (interleave, shuffle, parallel map, batch,
prefetch, AUTOTUNE) on the same records, alternating rounds; the best round of each counts.
CPU ms per example are printed too: on a shared machine they are steadier than examples/s.
``--breakdown`` adds variants (no rotation, every crop rotated, no colour jitter, rotated
crops by ImageProjectiveTransformV3 instead of XLA gathers, and a floor that also decodes
only its box) to show where the time goes. Rounds start with ``warmup`` batches (XLA
compiles its sampler once per window-size bucket in the first ones).

    python -m benchmarks.input_pipeline [--tfrecords 'dir/train-*.tfrecord'] [--breakdown]

Without --tfrecords it writes the coco_val_mini persons to a temporary folder first.
Prints examples/s of each and, last, ``ratio: b/a``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_MINI = os.path.join(REPO, "..", "shared", "data", "coco_val_mini")


def write_coco_mini_records(directory: str, num_shards: int = 4) -> list[str]:
    """Convert the coco_val_mini persons into ``num_shards`` TFRecord files under
    ``directory`` (``pipeline.convert``); returns the shard paths."""
    from pipeline.convert import ConvertOptions, convert_dataset
    from pipeline.records import split_files

    ann = os.path.join(COCO_MINI, "annotations", "person_keypoints_val2017_mini.json")
    if not os.path.isfile(ann):
        raise FileNotFoundError(f"{ann} not found; pass --tfrecords PATTERN instead")
    convert_dataset("coco", ann, os.path.join(COCO_MINI, "images"), directory, split="bench",
                    num_shards=num_shards, options=ConvertOptions(num_workers=1, quiet=True))
    return split_files(directory, "bench")


def floor_parse_fn(config, windowed: bool = False):
    """person (pixels encoded) -> (uint8 crop of the padded box, resized to the input size,
    bilinear): the whole image decoded, or with ``windowed`` only the box's pixels."""
    import tensorflow as tf

    from pipeline import affine, coords, decoder

    in_h, in_w = config.input_size

    def parse(decoded, seed):
        del seed
        cw, ch = coords.crop_size(1.0, config.padding, in_w / in_h)
        side = decoded["scale"] * coords.PIXELS_PER_SCALE
        half = tf.stack([ch, cw]) * side / (2.0 * coords.PIXELS_PER_SCALE)
        centre = tf.stack([decoded["center"][1], decoded["center"][0]])
        size = tf.cast(decoder.image_size(decoded), tf.float32)
        box = tf.concat([(centre - half) / size, (centre + half) / size], 0)
        if not windowed:
            image = decoder.read_window(decoded, tf.concat([[0, 0], decoder.image_size(decoded)], 0))
        else:   # the pixels of the box (clamped to the image), box relative to them
            lo = tf.clip_by_value(tf.floor(centre - half), 0.0, size - 1.0)
            hi = tf.clip_by_value(tf.math.ceil(centre + half) + 1.0, lo + 1.0, size)
            image = decoder.read_window(decoded, tf.cast(tf.concat([lo, hi], 0), tf.int32))
            box = tf.concat([(centre - half - lo), (centre + half - lo)], 0) / tf.tile(hi - lo, [2])
        crop = tf.image.crop_and_resize(image[tf.newaxis], box[tf.newaxis], [0], (in_h, in_w))[0]
        return affine.to_uint8(crop), {"keypoints": decoded["keypoints"]}

    return parse


def measure(dataset, batches: int, warmup: int = 30) -> tuple[float, float]:
    """(examples per second, process CPU ms per example) over ``batches`` batches after
    ``warmup``. CPU time is less disturbed by other programs on a shared machine."""
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        image, _ = next(it)
        n += int(image.shape[0])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, 1e3 * cpu / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tfrecords", help="TFRecord glob; default: coco_val_mini written to a temp dir")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=40, help="timed batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--breakdown", action="store_true",
                   help="also time variants: no rotation, all rotated, no jitter, projective "
                        "sampler, windowed floor")
    args = p.parse_args(argv)

    import dataclasses

    import tensorflow as tf

    from configs.keypoints import builtin_spec
    from pipeline.input_reader import InputReader
    from pipeline.parser import Parser, ParserConfig

    with tempfile.TemporaryDirectory() as tmp:
        pattern = args.tfrecords or write_coco_mini_records(tmp)
        config = ParserConfig()
        parser = Parser(config, builtin_spec("coco"))
        variants = {"floor": floor_parse_fn(config), "full": parser}
        if args.breakdown:
            spec = builtin_spec("coco")
            for name, change in (("no_rotation", {"rotation_prob": 0.0}),
                                 ("all_rotated", {"rotation_prob": 1.0}),
                                 ("no_jitter", {"color_jitter": 0.0}),
                                 ("projective_sampler", {"rotated_sampler": "projective"})):
                variants[name] = Parser(dataclasses.replace(config, **change), spec)
            variants["floor_windowed"] = floor_parse_fn(config, windowed=True)
        pipelines = {name: InputReader(pattern, fn, is_training=True, global_batch_size=args.batch_size)()
                     for name, fn in variants.items()}
        rates = {name: [] for name in pipelines}
        cpu = {name: [] for name in pipelines}
        for r in range(args.rounds):
            for name, ds in pipelines.items():
                rate, ms = measure(ds, args.batches)
                rates[name].append(rate)
                cpu[name].append(ms)
                print(f"round {r}: {name} {rate:.1f} examples/s, {ms:.2f} CPU ms/example", flush=True)
    best = {name: max(v) for name, v in rates.items()}
    least = {name: min(v) for name, v in cpu.items()}
    print(f"cpu_cores: {os.cpu_count()}  batch: {args.batch_size}  tf: {tf.__version__}")
    print(f"floor (read+parse+jpeg decode+crop_and_resize): {best['floor']:.1f} examples/s, "
          f"{least['floor']:.2f} CPU ms/example")
    print(f"full (train: warp+augment+17 heatmaps, 256x256): {best['full']:.1f} examples/s, "
          f"{least['full']:.2f} CPU ms/example")
    for name in pipelines:
        if name not in ("floor", "full"):
            print(f"{name}: {best[name]:.1f} examples/s, {least[name]:.2f} CPU ms/example")
    print(f"cpu_ratio (floor CPU ms / full CPU ms): {least['floor'] / least['full']:.3f}")
    print(f"ratio: {best['full'] / best['floor']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
