"""Training input on the tf.data service (pipeline/data_service.py), on loopback: a dispatcher
and two workers as processes of their own feed every record of an epoch exactly once and a
MirroredStrategy training (two logical CPUs, rotated crops by ImageProjectiveTransformV3; the
suite's only MirroredStrategy run.py) to its end, through a worker killed and restarted."""
from __future__ import annotations

import collections
import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.test_run import MIRRORED_RUN_PY, TINY, _env, _free_ports, _wait_until, small_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_addresses_and_a_missing_dispatcher_are_clear_errors(tmp_path, capsys):
    from pipeline.data_service import DataServiceError, check_dispatcher, parse_address
    assert parse_address("grpc://10.0.0.5:5050") == ("10.0.0.5", 5050)
    for bad in ("10.0.0.5:5050", "grpc://host", "http://host:1", "grpc://host:port"):
        with pytest.raises(DataServiceError, match="expected grpc://HOST:PORT"):
            parse_address(bad)
    port, = _free_ports(1)
    with pytest.raises(DataServiceError, match=f"no dispatcher answers at 127.0.0.1:{port}.*"
                                               f"pipeline.data_service dispatcher --port {port}"):
        check_dispatcher(f"grpc://127.0.0.1:{port}", timeout_s=2)
    import run
    code = run.main(["train", "--tfrecords", str(tmp_path), "--log_dir", str(tmp_path / "logs"),
                     "--data_service", f"grpc://127.0.0.1:{port}"] + TINY)
    assert code == 2
    err = capsys.readouterr().err
    assert "no dispatcher answers" in err and "Traceback" not in err


def _record_ids(dataset) -> collections.Counter:
    return collections.Counter(int(v) for batch in dataset for v in batch.numpy().ravel())


def _reader(records: str, url: str, job: str):
    """One epoch of the training reader (repeat=False, batches of 1), each example reduced to its
    annotation id."""
    from pipeline.input_reader import InputReader
    from pipeline.records import split_files
    return InputReader(split_files(records, "train"), parser=lambda decoded, seed: decoded["annotation_id"],
                       is_training=True, global_batch_size=1, seed=1, repeat=False,
                       data_service=url, job_name=job)


def _start(role_args, log):
    return subprocess.Popen([sys.executable, "-m", "pipeline.data_service"] + role_args, cwd=REPO,
                            env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.processes
@pytest.mark.slow
def test_loopback_service_feeds_every_record_once_and_survives_a_worker_restart(tmp_path):
    records = small_records(tmp_path, num_train=48, num_val=8, num_shards=6)
    from pipeline.records import read_dataset_info
    local = _record_ids(_reader(records, None, "local")())
    assert sum(local.values()) == read_dataset_info(records)["counts"]["train"] == len(local)
    d_port, w1_port, w2_port = _free_ports(3)
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("dispatcher", "w1", "w2", "w1b")}
    procs = {}
    try:
        procs["dispatcher"] = _start(["dispatcher", "--port", str(d_port), "--work_dir",
                                      str(tmp_path / "journal")], logs["dispatcher"])
        for name, port in (("w1", w1_port), ("w2", w2_port)):
            procs[name] = _start(["worker", "--dispatcher", f"127.0.0.1:{d_port}", "--port", str(port)],
                                 logs[name])
        url = f"grpc://127.0.0.1:{d_port}"
        _wait_until(list(procs.values()),
                    lambda: all("serving" in open(tmp_path / f"{n}.log").read() for n in ("w1", "w2")),
                    "two workers", lambda: "".join(open(tmp_path / f"{n}.log").read()
                                                   for n in ("dispatcher", "w1", "w2")), 120)

        served = _record_ids(_reader(records, url, "epoch")())          # one epoch, two workers
        assert served == local and set(served.values()) == {1}          # every record exactly once

        log_dir = str(tmp_path / "logs")
        with open(tmp_path / "train.log", "w") as train_log:
            train = subprocess.Popen(
                [sys.executable, "-c", MIRRORED_RUN_PY, "train", "--tfrecords", records, "--log_dir", log_dir,
                 "--total_epoch", "2", "--steps_per_epoch", "40", "--steps_per_loop", "1",
                 "--checkpoint_steps", "4", "--data_service", url, "--rotated_sampler", "projective"] + TINY,
                cwd=REPO, env=_env(), stdout=train_log, stderr=subprocess.STDOUT, text=True)
            procs["train"] = train
            _wait_until([train], lambda: glob.glob(os.path.join(log_dir, "checkpoints", "ckpt-*.index")),
                        "the first checkpoint", lambda: open(tmp_path / "train.log").read(), 400)
            assert train.poll() is None, open(tmp_path / "train.log").read()[-3000:]
            procs["w1"].send_signal(signal.SIGKILL)                      # an input worker dies
            procs["w1"].wait(30)
            procs["w1b"] = _start(["worker", "--dispatcher", f"127.0.0.1:{d_port}", "--port",
                                   str(w1_port)], logs["w1b"])           # and comes back
            code = train.wait(600)
        out = open(tmp_path / "train.log").read()
        assert code == 0, out[-3000:]
        assert os.path.isfile(os.path.join(log_dir, "final.keras"))
        assert open(os.path.join(log_dir, "val.txt")).read().count("Epoch") == 2
        assert "serving" in open(tmp_path / "w1b.log").read()
        config = json.load(open(os.path.join(log_dir, "run_config.json")))
        assert config["parser"]["rotated_sampler"] == "projective"
        assert config["data_service"] == url
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for log in logs.values():
            log.close()
