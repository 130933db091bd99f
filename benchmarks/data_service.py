"""Training input through the tf.data service on loopback, against the same input read locally.

    python -m benchmarks.data_service [--batches 40] [--rounds 2]

Writes the coco_val_mini persons to a temporary folder, then times the full training pipeline
(``Parser.parse_train`` at 256x256 through ``InputReader``): read in this process; through a
dispatcher and one worker process on 127.0.0.1; through the same dispatcher and two worker
processes. On a 2-core machine the workers share the trainer's cores, so this shows what the
service costs (serialization, gRPC, one more copy of each batch), not how it scales: on a
real cluster each worker brings its host's cores. Also prints the records' bytes per labelled
person against the bytes of the images they hold (each person's record holds its whole JPEG).
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


def record_bytes(shards: list[str]) -> tuple[int, int, int]:
    """(bytes of the shards, labelled persons in them, bytes of the distinct images they hold)."""
    import tensorflow as tf

    from pipeline import decoder
    persons, images = 0, {}
    for serialized in tf.data.TFRecordDataset(shards):
        d = decoder.decode(serialized, image=False)
        persons += 1
        images[d["source_id"].numpy()] = len(d["encoded"].numpy())
    return sum(os.path.getsize(s) for s in shards), persons, sum(images.values())


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
        shards = write_coco_mini_records(tmp, num_shards=8)
        total, persons, image_bytes = record_bytes(shards)
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
    print(f"record bytes per labelled person: {total / persons:.0f} ({persons} persons, "
          f"{total} bytes of records)")
    print(f"image bytes per labelled person: {image_bytes / persons:.0f} (each image once)")
    for name in best:
        print(f"{name}: {best[name]:.1f} examples/s")
    print(f"service/local: 1 worker {best['service_1_worker'] / best['local']:.3f}, "
          f"2 workers {best['service_2_workers'] / best['local']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
