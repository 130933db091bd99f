"""Converter throughput on the COCO subset: records per second, 1 worker vs all cores.

    .venv/bin/python -m benchmarks.convert [--repeat 8]

The 30-image subset is small, so it is repeated ``--repeat`` times (new image and annotation
ids, new file names linked to the same files) to measure more than process start-up.
Timings include starting the worker processes and writing the shards, not importing TF.
Everything is written to a temporary folder that is removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = os.path.join(REPO, "..", "shared", "data", "coco_val_mini")
ANNOTATIONS = os.path.join(COCO, "annotations", "person_keypoints_val2017_mini.json")


def repeated_dataset(path: str, images: str, repeat: int, out_dir: str) -> tuple[str, str]:
    """The COCO json with its images and annotations listed `repeat` times under new ids and
    new file names (symlinks to the same files, so that every copy is read and decoded)."""
    with open(path) as f:
        data = json.load(f)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir)
    new_images, anns = [], []
    for r in range(repeat):
        offset = r * 10_000_000
        for i in data["images"]:
            name = f"r{r:03d}_{i['file_name']}"
            os.symlink(os.path.abspath(os.path.join(images, i["file_name"])), os.path.join(image_dir, name))
            new_images.append(dict(i, id=i["id"] + offset, file_name=name))
        anns += [dict(a, id=a["id"] + offset, image_id=a["image_id"] + offset) for a in data["annotations"]]
    ann_path = os.path.join(out_dir, "person_keypoints_bench.json")
    with open(ann_path, "w") as f:
        json.dump(dict(data, images=new_images, annotations=anns), f)
    return ann_path, image_dir


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--num_shards", type=int, default=4)
    args = p.parse_args(argv)
    if not os.path.isfile(ANNOTATIONS):
        raise SystemExit(f"{ANNOTATIONS} not found: the benchmark needs ../shared/data/coco_val_mini")
    import tensorflow as tf  # noqa: F401  (imported once, outside the timings)

    from pipeline.convert import ConvertOptions, available_cpus, convert_dataset
    cores = available_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        ann, images = repeated_dataset(ANNOTATIONS, os.path.join(COCO, "images"), args.repeat, tmp)
        print(f"COCO subset x{args.repeat}, {cores} cores, {args.num_shards} shards")
        rates = {}
        for workers in (1, cores):
            start = time.perf_counter()
            info = convert_dataset("coco", ann, images, os.path.join(tmp, f"w{workers}"),
                                   split="train", num_shards=args.num_shards,
                                   options=ConvertOptions(num_workers=workers, quiet=True))
            seconds = time.perf_counter() - start
            n = info["counts"]["train"]
            rates[workers] = n / seconds
            print(f"  {workers:2d} worker{'s' if workers > 1 else ' '}: {n} records in {seconds:6.2f} s "
                  f"= {rates[workers]:7.1f} records/s")
        if cores > 1:
            print(f"  speed-up {rates[cores] / rates[1]:.2f}x with {cores} workers")


if __name__ == "__main__":
    main()
