"""Training input through the tf.data service on loopback, against the same input read locally.

    python -m benchmarks.data_service [--batches 40] [--rounds 2]

Writes the coco_val_mini persons to a temporary folder, then times the full training pipeline
(``Parser.parse_train`` at 256x256 through ``InputReader``): read in this process; through a
dispatcher and one worker process on 127.0.0.1; through the same dispatcher and two worker
processes. On a 2-core machine the workers share the trainer's cores, so this shows what the
service costs (serialization, gRPC, one more copy of each batch), not how it scales: on a
real cluster each worker brings its host's cores.

Also prints, on the COCO and MPII subsets in ../shared/data, each repeated to about 3,000
labelled persons: the record bytes per labelled person in schema 2 (one record per image,
its persons inside) and in schema 1 (one record per person, each holding the whole image
again: ``pipeline.schema.person_examples``), beside the bytes of the images themselves.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.input_pipeline import COCO_MINI, measure, write_coco_mini_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TFRECORD_FRAMING = 16   # bytes around each record in a TFRecord file (length, two CRCs)
MPII_MINI = os.path.join(REPO, "..", "shared", "data", "mpii_mini")


def record_bytes(shards: list[str]) -> dict:
    """Bytes of the records in ``shards`` as written (schema 2) and as schema 1 would write the
    same persons, the labelled persons, the records and the bytes of the distinct images."""
    import tensorflow as tf

    from pipeline import schema
    out = {"schema2": 0, "schema1": 0, "persons": 0, "records": 0, "images": {}}
    for serialized in tf.data.TFRecordDataset(shards):
        raw = serialized.numpy()
        people = schema.person_examples(raw)
        out["schema2"] += len(raw) + TFRECORD_FRAMING
        out["schema1"] += sum(len(p) + TFRECORD_FRAMING for p in people)
        out["persons"] += len(people)
        out["records"] += 1
        feature = tf.train.Example.FromString(raw).features.feature
        out["images"][feature[schema.SOURCE_ID].bytes_list.value[0]] = len(
            feature[schema.ENCODED].bytes_list.value[0])
    return out


def repeated(shards: list[str], directory: str, persons: int, num_shards: int = 8) -> list[str]:
    """The records of ``shards`` written again and again into ``num_shards`` files under
    ``directory`` until they hold at least ``persons`` labelled persons."""
    import tensorflow as tf

    from pipeline import schema
    records = [r.numpy() for r in tf.data.TFRecordDataset(shards)]
    per_pass = sum(len(schema.person_examples(r)) for r in records)
    passes = -(-persons // per_pass)
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"repeated-{i:05d}-of-{num_shards:05d}.tfrecord")
             for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for j, record in enumerate(r for _ in range(passes) for r in records):
        writers[j % num_shards].write(record)
    for w in writers:
        w.close()
    return paths


def subset_records(tmp: str) -> dict:
    """name -> shards of each shared subset, converted by ``pipeline.convert``."""
    from pipeline.convert import ConvertOptions, convert_dataset
    from pipeline.records import split_files
    out = {"coco_val_mini": write_coco_mini_records(os.path.join(tmp, "coco"), num_shards=1)}
    mpii = os.path.join(MPII_MINI, "test_mpii_subset.json")
    if os.path.isfile(mpii):
        folder = os.path.join(tmp, "mpii")
        convert_dataset("mpii", mpii, os.path.join(MPII_MINI, "images"), folder, split="bench",
                        num_shards=1, options=ConvertOptions(num_workers=1, quiet=True))
        out["mpii_mini"] = split_files(folder, "bench")
    return out


def start_worker(dispatcher: str, log) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "pipeline.data_service", "worker", "--dispatcher",
                             dispatcher], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_serving(log_path: str, count: int, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with open(log_path) as f:
            if f.read().count("worker serving") >= count:
                time.sleep(1.0)          # registered with the dispatcher shortly after it prints
                return
        time.sleep(0.2)
    raise RuntimeError(f"the data service worker did not start; see {log_path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=40, help="timed batches per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--persons", type=int, default=3000, help="repeat each subset to this many persons")
    args = p.parse_args(argv)
    if not os.path.isdir(COCO_MINI):
        print(f"error: {COCO_MINI} not found (the shared data)", file=sys.stderr)
        return 2

    import tensorflow as tf

    from configs.keypoints import builtin_spec
    from pipeline.data_service import start_dispatcher
    from pipeline.input_reader import InputReader
    from pipeline.parser import Parser, ParserConfig

    with tempfile.TemporaryDirectory() as tmp:
        sizes, subsets = {}, {}
        for name, subset in subset_records(tmp).items():
            subsets[name] = repeated(subset, os.path.join(tmp, f"{name}_x"), args.persons)
            sizes[name] = record_bytes(subsets[name])
        shards = subsets["coco_val_mini"]      # the training input timed below
        parser = Parser(ParserConfig(), builtin_spec("coco"))
        dispatcher = start_dispatcher(0)
        address = dispatcher.target.split("://", 1)[1]
        log_path = os.path.join(tmp, "workers.log")
        workers = []

        def reader(service, job):
            return InputReader(shards, parser, is_training=True, global_batch_size=args.batch_size,
                               data_service=service, job_name=job)()

        rates: dict[str, list[float]] = {}
        try:
            with open(log_path, "w") as log:
                plan = (("local", 0), ("service_1_worker", 1), ("service_2_workers", 2))
                for name, needed in plan:
                    while len(workers) < needed:
                        workers.append(start_worker(address, log))
                        wait_serving(log_path, len(workers))
                    for r in range(args.rounds):
                        ds = reader(dispatcher.target if needed else None, f"bench-{name}-{r}")
                        rate, _ = measure(ds, args.batches, warmup=20)
                        rates.setdefault(name, []).append(rate)
                        print(f"round {r}: {name} {rate:.1f} examples/s", flush=True)
        finally:
            for w in workers:
                w.kill()
                w.wait()
    best = {name: max(v) for name, v in rates.items()}
    print(f"cpu_cores: {os.cpu_count()}  batch: {args.batch_size}  tf: {tf.__version__}  "
          f"(workers share these cores: this measures the service's overhead, not its scaling)")
    for name, s in sizes.items():
        image_bytes = sum(s["images"].values()) * s["records"] / max(len(s["images"]), 1)
        print(f"{name}: {s['persons']} persons in {s['records']} records; bytes per labelled person: "
              f"schema 1 (a record per person) {s['schema1'] / s['persons']:.0f}, schema 2 (a record per "
              f"image) {s['schema2'] / s['persons']:.0f}, the images alone {image_bytes / s['persons']:.0f}; "
              f"schema 2 / schema 1: {s['schema2'] / s['schema1']:.3f}")
    for name in best:
        print(f"{name}: {best[name]:.1f} examples/s")
    print(f"service/local: 1 worker {best['service_1_worker'] / best['local']:.3f}, "
          f"2 workers {best['service_2_workers'] / best['local']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
