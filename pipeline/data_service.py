"""Training input on other hosts: the tf.data service.

    python -m pipeline.data_service dispatcher --port 5050 --work_dir /shared/dispatcher
    python -m pipeline.data_service worker --dispatcher chief-host:5050       # on each CPU host
    python run.py train --tfrecords gs://bucket/records ... --data_service grpc://chief-host:5050

The trainer sends its whole training pipeline (read, shuffle, decode, crop, augment, encode
heatmaps, batch) to the service as a graph; the workers run it and stream batches back. The
processing mode is dynamic sharding ("distributed epoch"): the dispatcher hands each record
file to one worker at a time, so within an epoch every record is produced once across all
workers, and the trainers of one run (one job) share that stream. With ``--work_dir`` the
dispatcher journals its state there (fault-tolerant mode): it can be restarted, and a worker
that is killed and restarted (same or another port) rejoins the job; the files it was reading
when it died are not read again in that epoch. Validation stays local (every example, in
order). Workers need the records at the same path as the trainer (a shared filesystem or a
bucket).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Optional
from urllib.parse import urlparse

PROTOCOL = "grpc"


class DataServiceError(ValueError):
    """A bad --data_service address or a dispatcher that does not answer."""


def parse_address(url: str) -> tuple[str, int]:
    """(host, port) of ``grpc://HOST:PORT``; DataServiceError naming the flag otherwise."""
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != PROTOCOL or not parsed.hostname or not port or parsed.path not in ("", "/"):
        raise DataServiceError(f"--data_service {url}: expected grpc://HOST:PORT, the address of a "
                               f"dispatcher started with `python -m pipeline.data_service "
                               f"dispatcher --port PORT`")
    return parsed.hostname, port


def check_dispatcher(url: str, timeout_s: float = 10.0) -> None:
    """Raise DataServiceError with the fix when nothing listens at the dispatcher's address
    (the service itself would retry forever)."""
    host, port = parse_address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise DataServiceError(
            f"--data_service {url}: no dispatcher answers at {host}:{port} ({e.strerror or e}); "
            f"start one there with `python -m pipeline.data_service dispatcher --port {port}` and "
            f"at least one `python -m pipeline.data_service worker --dispatcher {host}:{port}`") from e


def distribute(dataset, url: str, job_name: str):
    """`dataset` served by the tf.data service at `url`: built once by the dispatcher, run by its
    workers with dynamic sharding, consumed by every trainer that names the same `job_name`."""
    import tensorflow as tf
    service = tf.data.experimental.service
    return dataset.apply(service.distribute(processing_mode=service.ShardingPolicy.DYNAMIC,
                                            service=url, job_name=job_name))


def job_name_for(log_dir: str) -> str:
    """One job per run: the trainers of a run (several workers) share it, other runs do not."""
    import hashlib
    return "hourglass-" + hashlib.sha1(os.path.normpath(log_dir).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- servers

def start_dispatcher(port: int, work_dir: Optional[str] = None):
    """A started DispatchServer on `port` (0: any free port), fault-tolerant when `work_dir`."""
    import tensorflow as tf
    service = tf.data.experimental.service
    config = service.DispatcherConfig(port=port, protocol=PROTOCOL, work_dir=work_dir,
                                      fault_tolerant_mode=bool(work_dir))
    return service.DispatchServer(config)


def start_worker(dispatcher: str, port: int = 0, worker_address: Optional[str] = None):
    """A started WorkerServer registered with `dispatcher` (HOST:PORT)."""
    import tensorflow as tf
    service = tf.data.experimental.service
    kwargs = {"worker_address": worker_address} if worker_address else {}
    return service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher, port=port,
                                                     protocol=PROTOCOL, **kwargs))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.data_service",
                                description="tf.data service servers for run.py train --data_service")
    sub = p.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="the one dispatcher of a cluster (beside the chief)")
    d.add_argument("--port", type=int, required=True, help="port to listen on")
    d.add_argument("--work_dir", help="folder for the dispatcher's journal: fault-tolerant mode "
                                      "(restartable, workers may come and go)")
    w = sub.add_parser("worker", help="an input worker (on any host that can read the records)")
    w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    w.add_argument("--port", type=int, default=0, help="port to listen on (default: any free)")
    w.add_argument("--worker_address", help="HOST:%%port%% the trainers reach this worker at "
                                            "(default: localhost:%%port%%; set it on other hosts)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.role == "dispatcher":
        if args.work_dir:
            os.makedirs(args.work_dir, exist_ok=True)
        try:
            server = start_dispatcher(args.port, args.work_dir)
        except Exception as e:   # port taken, unwritable work_dir: one line, exit 2
            print(f"error: cannot start a dispatcher on port {args.port}: {e}", file=sys.stderr)
            return 2
        print(f"dispatcher listening on {server.target}"
              + (f" (fault-tolerant, journal in {args.work_dir})" if args.work_dir else ""), flush=True)
    else:
        if ":" not in args.dispatcher:
            print(f"error: --dispatcher {args.dispatcher}: expected HOST:PORT", file=sys.stderr)
            return 2
        try:
            server = start_worker(args.dispatcher, args.port, args.worker_address)
        except Exception as e:
            print(f"error: cannot start a worker for {args.dispatcher}: {e}", file=sys.stderr)
            return 2
        print(f"worker serving dispatcher {args.dispatcher}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
