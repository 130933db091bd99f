"""A log dir resumes only the run it holds: other records or settings are refused (exit 2),
a finished run is not trained or rewritten again, --overwrite_log_dir starts over, a resumed
run drops what the killed one wrote after its checkpoint (val.txt lines, best models,
TensorBoard events), SIGTERM saves a checkpoint at the current step (exit 143), and after SIGKILL the same
command resumes from the last checkpoint.

run.py runs in this process (``run.main``) except for the launches that receive a signal and
the two-worker runs."""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.test_run import REPO, TINY, _env, _wait_until, small_records

RUN = [sys.executable, os.path.join(REPO, "run.py"), "train"]
SCHEDULE = ["--total_epoch", "2", "--steps_per_epoch", "4", "--steps_per_loop", "1",
            "--checkpoint_steps", "2", "--seed", "0"]


def _records(root, seed):
    return small_records(root, num_train=32, num_val=8, image_size=(96, 96), seed=seed, num_shards=1)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two record folders with the same keypoints and counts but other images."""
    return (_records(tmp_path_factory.mktemp("rec_a"), 3), _records(tmp_path_factory.mktemp("rec_b"), 4))


@pytest.fixture(scope="module")
def finished(records, tmp_path_factory):
    """A finished 2-epoch run (8 steps, checkpoints every 2) on records[0]: (log_dir, argv)."""
    log_dir = str(tmp_path_factory.mktemp("finished") / "logs")
    argv = ["--tfrecords", records[0], "--log_dir", log_dir] + SCHEDULE + TINY
    import run
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run.main(["train"] + argv)
    assert code == 0, out.getvalue()[-2000:] + err.getvalue()[-3000:]
    return log_dir, argv


def _snapshot(log_dir):
    """name -> (size, mtime_ns) of every file under log_dir."""
    out = {}
    for path in glob.glob(os.path.join(log_dir, "**", "*"), recursive=True):
        if os.path.isfile(path):
            st = os.stat(path)
            out[os.path.relpath(path, log_dir)] = (st.st_size, st.st_mtime_ns)
    return out


def _main(argv, capsys):
    import run
    code = run.main(["train"] + argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _set(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def assert_each_step_once(log_dir):
    """Every (tag, step) in the TensorBoard logs appears once (TensorBoard's own purge off)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    seen = 0
    for sub in ("train", "validation"):
        acc = EventAccumulator(os.path.join(log_dir, sub), purge_orphaned_data=False,
                               size_guidance={"tensors": 0, "scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            steps = [e.step for e in acc.Tensors(tag)]
            assert len(steps) == len(set(steps)), (sub, tag, sorted(steps))
            seen += len(steps)
    assert seen


def _val_epochs(log_dir):
    return [int(line.split(":")[0].split()[1]) for line in open(os.path.join(log_dir, "val.txt"))]


# ---------------------------------------------------------------------------- slow: real runs
@pytest.mark.slow
def test_finished_run_is_not_trained_again(finished, capsys):
    """The same command after the run finished: says so, exit 0, nothing rewritten."""
    log_dir, argv = finished
    before = _snapshot(log_dir)
    code, out, err = _main(argv, capsys)
    assert code == 0, err[-3000:]
    assert "already finished at step 8 (epoch 2)" in out
    assert f"final model at {os.path.join(log_dir, 'final.keras')}" in out
    assert "nothing to do" in out
    after = _snapshot(log_dir)
    for name in ("final.keras", "val.txt") + tuple(n for n in before if n.startswith("checkpoints")):
        assert after[name] == before[name], name


@pytest.mark.slow
def test_other_records_or_settings_are_refused(finished, records, capsys):
    """Reusing the log dir with other records (same keypoints, same counts), another model
    or another sigma: exit 2 naming the difference and the fix; nothing in it changes."""
    log_dir, argv = finished
    before = _snapshot(log_dir)
    cases = [(_set(argv, "--tfrecords", records[1]), "records (dataset_info.json content"),
             (argv + ["--num_stacks", "2"], "num_stacks 1 -> 2"),
             (argv + ["--sigma", "3"], "parser.sigma 2.0 -> 3.0"),
             (_set(argv, "--batch_size", "4"), "batch_size 8 -> 4")]
    for args, difference in cases:
        code, out, err = _main(args, capsys)
        assert code == 2, (args, out, err)
        assert f"--log_dir {log_dir} holds another run" in err and difference in err, err
        assert "use a new --log_dir, or add --overwrite_log_dir" in err
    assert _snapshot(log_dir) == before


@pytest.mark.slow
def test_resume_after_kill_drops_what_came_after_the_checkpoint(finished, tmp_path, capsys):
    """A run killed after epoch 2 was evaluated (val.txt line, best model, summaries
    written) but before its checkpoint: the log dir of the finished run with its last
    checkpoint and final model removed is exactly that state. The same command redoes
    steps 7-8 and epoch 2's evaluation, and each appears once."""
    import tensorflow as tf
    src, argv = finished
    log_dir = str(tmp_path / "logs")
    shutil.copytree(src, log_dir)
    ckpt_dir = os.path.join(log_dir, "checkpoints")
    for path in glob.glob(os.path.join(ckpt_dir, "ckpt-8.*")):
        os.remove(path)
    tf.compat.v1.train.update_checkpoint_state(ckpt_dir, "ckpt-6", ["ckpt-6"])
    os.remove(os.path.join(log_dir, "final.keras"))
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-6")
    assert _val_epochs(log_dir) == [1, 2]
    argv = _set(argv, "--log_dir", log_dir)
    code, out, err = _main(argv, capsys)
    assert code == 0, err[-3000:]
    assert _val_epochs(log_dir) == [1, 2]
    assert len(glob.glob(os.path.join(log_dir, "ep002-*.keras"))) <= 1
    assert all(os.path.isfile(p[:-len(".keras")] + ".json")
               for p in glob.glob(os.path.join(log_dir, "ep*.keras")))
    assert_each_step_once(log_dir)
    assert os.path.isfile(os.path.join(log_dir, "final.keras"))


@pytest.mark.slow
def test_overwrite_log_dir_starts_over(finished, records, tmp_path, capsys):
    """--overwrite_log_dir with other records: the old run's outputs go, a new run trains
    from step 0 and its identity replaces the old one."""
    src, argv = finished
    log_dir = str(tmp_path / "logs")
    shutil.copytree(src, log_dir)
    (tmp_path / "logs" / "notes.txt").write_text("mine")
    argv = _set(_set(_set(argv, "--log_dir", log_dir), "--tfrecords", records[1]), "--total_epoch", "1")
    code, out, err = _main(argv + ["--overwrite_log_dir"], capsys)
    assert code == 0, err
    assert _val_epochs(log_dir) == [1]
    assert not glob.glob(os.path.join(log_dir, "ep002-*"))
    assert (tmp_path / "logs" / "notes.txt").read_text() == "mine"   # not a run output: kept
    identity = json.load(open(os.path.join(log_dir, "run_identity.json")))
    assert identity["steps_per_epoch"] == 4
    import tensorflow as tf
    assert tf.train.latest_checkpoint(os.path.join(log_dir, "checkpoints")).endswith("ckpt-4")
    assert_each_step_once(log_dir)
    code, out, err = _main(_set(argv, "--tfrecords", records[0]), capsys)   # and it is now B's
    assert code == 2 and "records (dataset_info.json content" in err


def _train_steps_written(log_dir):
    """Steps of loss/total flushed to the train event files so far."""
    import tensorflow as tf
    steps = set()
    for path in glob.glob(os.path.join(log_dir, "train", "*tfevents*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == "loss/total":
                        steps.add(event.step)
        except tf.errors.DataLossError:
            pass
    return steps


def _latest_step(log_dir) -> int:
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(os.path.join(log_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.processes
@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_sigkill_and_each_relaunch_resumes(records, tmp_path, capsys):
    """SIGTERM to a real single-machine run: a checkpoint at the step it reached, a message,
    exit 143, no final model. The same command resumes from that step; SIGKILLed as soon as
    its next periodic checkpoint is complete, the same command again (here in this process)
    resumes from that one and finishes: every step, summary and epoch evaluation once. (One
    test, so the two signals cost three launches, not four.)"""
    log_dir = str(tmp_path / "logs")
    total = 24
    argv = ["--tfrecords", records[0], "--log_dir", log_dir, "--total_epoch", "3",
            "--steps_per_epoch", "8", "--steps_per_loop", "1", "--checkpoint_steps", "4"] + \
        [a for a in TINY if a != "--quiet"]      # the resume lines are part of the progress output

    def launch(name):
        log = tmp_path / f"{name}.log"
        with open(log, "w") as f:
            return subprocess.Popen(RUN + argv, cwd=REPO, env=_env(), stdout=f,
                                    stderr=subprocess.STDOUT, text=True), log

    proc, log = launch("terminated")
    _wait_until([proc], lambda: _train_steps_written(log_dir), "SIGTERM",    # summaries flush
                log.read_text)                                               # every 10 events
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
    terminated_at = _latest_step(log_dir)
    assert 1 <= terminated_at < total
    out = log.read_text()
    assert f"SIGTERM: stopped at step {terminated_at}" in out and "rerun the same command to resume" in out
    assert not os.path.exists(os.path.join(log_dir, "final.keras"))

    assert terminated_at < total - 4, "no periodic checkpoint left before the end to SIGKILL after"

    proc, log = launch("killed")
    _wait_until([proc], lambda: _latest_step(log_dir) > terminated_at, "SIGKILL", log.read_text)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = log.read_text()
    assert "resumed from" in out and f"at step {terminated_at}" in out
    killed_at = _latest_step(log_dir)
    assert killed_at % 4 == 0 and terminated_at < killed_at < total
    assert not os.path.exists(os.path.join(log_dir, "final.keras"))

    code, out, err = _main(argv, capsys)
    assert code == 0, err[-3000:]
    assert "resumed from" in out and f"at step {killed_at}" in out
    assert os.path.isfile(os.path.join(log_dir, "final.keras"))
    assert _latest_step(log_dir) == total
    assert _val_epochs(log_dir) == [1, 2, 3]
    assert_each_step_once(log_dir)
    assert _train_steps_written(log_dir) == set(range(1, total + 1))


# ---------------------------------------------------------------------------- fast
def test_log_dir_with_outputs_but_no_identity_is_refused(tmp_path):
    """Outputs of an unknown run (e.g. written before run_identity.json existed): refused."""
    from model.trainer import LogDirError, check_log_dir
    check_log_dir(str(tmp_path / "new"), {"version": 1})          # nothing there: fine
    (tmp_path / "run_identity.json").write_text('{"version": 1, "seed": 1}')
    check_log_dir(str(tmp_path), {"version": 1, "seed": 2})       # a launch that never trained
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "val.txt").write_text("Epoch 1:0.5\n")
    with pytest.raises(LogDirError, match="no run_identity.json .*val.txt.*--overwrite_log_dir"):
        check_log_dir(str(legacy), {"version": 1})
    check_log_dir(str(legacy), {"version": 1}, overwrite=True)


def test_purge_rewrites_event_files_and_val_lines(tmp_path):
    """purge_after_step keeps events of step <= the checkpoint's, drops a torn last record,
    keeps val.txt epochs <= the epochs done, removes later best models with their json."""
    import tensorflow as tf

    from model.trainer import purge_after_step
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    with writer.as_default():
        for step in range(1, 11):
            tf.summary.scalar("loss/total", 1.0 / step, step=step)
    writer.close()
    path = glob.glob(str(tmp_path / "train" / "*tfevents*"))[0]
    with open(path, "ab") as f:
        f.write(b"\x20\x00\x00\x00torn")                  # a record cut by a kill
    (tmp_path / "val.txt").write_text("Epoch 1:0.1\nEpoch 2:0.2\nEpoch 3:0.3\n")
    for e in (1, 3):
        (tmp_path / f"ep{e:03d}-loss0.1000-val_pck0.{e}000.keras").write_text("x")
        (tmp_path / f"ep{e:03d}-loss0.1000-val_pck0.{e}000.json").write_text("{}")
    dropped = purge_after_step(str(tmp_path), 6, 2)
    assert dropped == {"val_lines": 1, "best_models": 1, "events": 4}
    steps = [e.step for e in tf.compat.v1.train.summary_iterator(path) if e.summary.value]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "val.txt").read_text() == "Epoch 1:0.1\nEpoch 2:0.2\n"
    assert sorted(os.listdir(tmp_path)) == ["ep001-loss0.1000-val_pck0.1000.json",
                                            "ep001-loss0.1000-val_pck0.1000.keras", "train", "val.txt"]
    assert purge_after_step(str(tmp_path), 6, 2) == {"val_lines": 0, "best_models": 0, "events": 0}


@pytest.mark.processes
@pytest.mark.slow
def test_sigterm_to_one_of_two_workers_saves_and_resumes(records, tmp_path):
    """MultiWorkerMirroredStrategy on loopback: SIGTERM to the non-chief worker makes both
    save a checkpoint at the same step (PreemptionCheckpointHandler) and exit 143; the same
    two commands resume from that step and finish together with identical weights, only the
    chief writing into the log dir. (This is also the suite's two-worker training test: it
    was test_run.py::test_two_workers_multi_worker_mirrored, whose checks are the last ones
    here; each two-worker launch costs two graph compilations.)"""
    from tests.test_run import _free_ports
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    log_dir = str(tmp_path / "logs")
    argv = ["--tfrecords", records[0], "--log_dir", log_dir, "--total_epoch", "1",
            "--steps_per_epoch", "16", "--steps_per_loop", "1", "--checkpoint_steps", "1000",
            "--seed", "1"] + [a for a in TINY if a != "--quiet"]

    def launch():
        return [subprocess.Popen(
            RUN + argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
            for i in range(2)]

    procs = launch()
    _wait_until(procs, lambda: _train_steps_written(log_dir), "SIGTERM", procs[0].stdout.read)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [143, 143], [o[-2000:] for o in outputs]
    assert all("preempted (SIGTERM): checkpoint saved" in o for o in outputs)
    step = _latest_step(log_dir)
    assert 1 <= step < 16
    assert not os.path.exists(os.path.join(log_dir, "final.keras"))
    procs = launch()
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outputs]
    assert f"at step {step}" in outputs[0]
    assert _latest_step(log_dir) == 16
    assert_each_step_once(log_dir)
    # trained together: identical weights; only the chief writes into the log dir
    digests = [re.findall(r"weights_digest: (\w+)", out) for out in outputs]
    assert digests[0] and digests[0] == digests[1], digests
    assert os.path.isfile(os.path.join(log_dir, "final.keras"))
    checkpoints = glob.glob(os.path.join(log_dir, "checkpoints", "ckpt-*.index"))
    assert sorted(os.path.basename(c) for c in checkpoints) == sorted(
        {f"ckpt-{step}.index", "ckpt-16.index"}), checkpoints
    assert len(glob.glob(os.path.join(log_dir, "**", "final.keras"), recursive=True)) == 1


def test_identity_is_the_config_tree_less_resumable_settings():
    """run_identity comes from the TrainConfig tree: equal for an identical relaunch and for
    one that changes only RESUMABLE_SETTINGS or parser.rotated_sampler; a model or parser
    setting is a difference named by its path in the tree."""
    import dataclasses

    from configs import builtin_spec
    from model.run_dir import IDENTITY_VERSION, _identity_differences
    from model.trainer import TrainConfig, run_identity
    spec = builtin_spec("coco")
    info = {"keypoint_names": list(spec.names), "counts": {"train": 8}}
    cfg = TrainConfig.smoke("/records", "/logs", spec.num_keypoints)
    cfg.validate()
    identity = run_identity(cfg, spec, info, 2)
    assert identity["version"] == IDENTITY_VERSION == 2
    assert identity == run_identity(TrainConfig.smoke("/records", "/logs", 17), spec, info, 2)
    resumed = dataclasses.replace(cfg, tfrecords="/moved", log_dir="/other", total_epoch=5,
                                  steps_per_loop=7, checkpoint_steps=3, jit_compile=True,
                                  verbose=False, parser=dataclasses.replace(
                                      cfg.parser, rotated_sampler="projective"))
    assert run_identity(resumed, spec, info, 2) == identity
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_stacks=2))
    assert _identity_differences(identity, run_identity(other, spec, info, 2)) == [
        "model.num_stacks 1 -> 2"]
    with pytest.raises(ValueError, match="parser.input_size"):
        dataclasses.replace(cfg, parser=dataclasses.replace(cfg.parser, input_size=(96, 96))).validate()
