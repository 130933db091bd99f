"""pytest plugin: the quickstart, trained once per test run by the real trainer.

``quickstart_records`` runs the first three lines of the Makefile's ``quickstart`` recipe (the
synthetic set, its conversion to TFRecords with --verify) and ``quickstart_run`` the fourth
(``run.py train`` with QS_MODEL / QS_TRAIN), all in this process through the programs' own
``main(argv)``, with ``quickstart_out`` replaced by a temp folder. The commands are read from
the Makefile, so the tests train exactly what a user's ``make quickstart`` trains. Under
pytest-xdist the first worker that needs them builds them into a folder all workers see and
the others wait for it (``_once``), so the quickstart is trained once, not once per worker.

Tests that need "some trained model" use ``quickstart_run.final_model``; they must not write
into its folders (copy first): every test of the session shares them.
Registered in tests/conftest.py with ``pytest_plugins = ["tests.trained_model"]``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time

import pytest

from configs.quickstart import QS, quickstart_lines


def quickstart_argv(program: str, root: str, mode: str | None = None) -> list[str]:
    """argv (after the program) of the first recipe line running `program`, with
    quickstart_out -> `root` (``configs.quickstart.quickstart_lines``)."""
    return quickstart_lines(program, root, mode)[0]


@dataclasses.dataclass(frozen=True)
class QuickstartRecords:
    root: str          # the session's quickstart_out
    synthetic: str     # quickstart_out/synthetic: images/{train,val}/*.jpg, annotations/*.json
    records: str       # quickstart_out/tfrecords: train (4 shards) and val (1 shard) + dataset_info.json
    seconds: float     # generation + conversion

    @property
    def val_images(self) -> str:
        return os.path.join(self.synthetic, "images", "val")


@dataclasses.dataclass(frozen=True)
class QuickstartRun:
    root: str
    synthetic: str
    records: str
    log_dir: str       # quickstart_out/logs: checkpoints, val.txt, ep*-val_pck*.keras, summaries
    final_model: str   # quickstart_out/logs/final.keras (+ final.json metadata)
    summary: dict      # what the trainer returned: steps, best_val_pck, last, seconds, ...
    stdout: str        # what run.py train printed
    val_pcks: tuple    # val.txt, one PCK per epoch
    seconds: float     # run.main(["train", ...]) wall time (records not included)

    @property
    def val_images(self) -> str:
        return os.path.join(self.synthetic, "images", "val")


def _call(main, argv, what):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code in (0, None), f"{what} {' '.join(argv)}: exit {code}\n{out.getvalue()[-3000:]}\n" \
                              f"{err.getvalue()[-3000:]}"
    return out.getvalue()


def _shared_root(tmp_path_factory) -> str:
    """A folder every pytest-xdist worker of this run sees (the parent of the workers' own
    temp folders); this session's temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


def _plain(value):
    """JSON for NumPy values in a fixture's result."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _once(tmp_path_factory, name: str, build, timeout_s: float = 3600.0) -> dict:
    """``build(folder) -> dict`` run once per test run into ``<shared root>/name``, even across
    pytest-xdist workers: the first worker to get here builds and writes ``name.done.json``;
    the others wait for it and read it (and fail at once if the builder failed)."""
    import json
    import traceback

    root = _shared_root(tmp_path_factory)
    folder = os.path.join(root, name)
    done, failed = folder + ".done.json", folder + ".failed.txt"
    try:
        os.close(os.open(folder + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:                      # another worker builds it: wait
        deadline = time.time() + timeout_s
        while not os.path.exists(done):
            if os.path.exists(failed):
                pytest.fail(f"{name} failed in another pytest worker:\n{open(failed).read()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"timed out waiting for another pytest worker to build {name}")
            time.sleep(1.0)
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    try:
        os.makedirs(folder)
        result = build(folder)
    except BaseException:
        with open(failed, "w") as f:
            f.write(traceback.format_exc())
        raise
    with open(done + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, default=_plain)
    os.replace(done + ".tmp", done)
    return result


@pytest.fixture(scope="session")
def quickstart_records(tmp_path_factory) -> QuickstartRecords:
    """The quickstart's synthetic set (800 train / 100 val, 192x192) and its TFRecords."""
    def build(root):
        import convert_to_tfrecord
        from pipeline import synthetic

        t0 = time.time()
        _call(synthetic.main, quickstart_argv("-m pipeline.synthetic", root), "pipeline.synthetic")
        for argv in quickstart_lines("convert_to_tfrecord.py", root):
            # one worker: the same records (the converter's output does not depend on the worker
            # count) without spawning interpreters that import the pipeline again
            _call(convert_to_tfrecord.main, argv + ["--num_workers", "1", "--quiet"],
                  "convert_to_tfrecord.py")
        return dict(root=root, synthetic=os.path.join(root, "synthetic"),
                    records=os.path.join(root, "tfrecords"), seconds=round(time.time() - t0, 1))

    return QuickstartRecords(**_once(tmp_path_factory, QS, build))


@pytest.fixture(scope="session")
def quickstart_run(quickstart_records, tmp_path_factory) -> QuickstartRun:
    """The quickstart model: `run.py train` with the Makefile's QS_MODEL and QS_TRAIN (700 steps),
    trained once per test run (in the first pytest worker that needs it)."""
    qs = quickstart_records

    def build(_):
        import run
        from model import cli

        argv = quickstart_argv("run.py", qs.root, mode="train")
        returned = {}
        real_train = cli.train

        def keep_summary(args):
            returned["summary"] = real_train(args)
            return returned["summary"]

        t0 = time.time()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cli, "train", keep_summary)
            stdout = _call(run.main, argv, "run.py")
        seconds = round(time.time() - t0, 1)
        log_dir = argv[argv.index("--log_dir") + 1]
        with open(os.path.join(log_dir, "val.txt")) as f:
            val_pcks = [float(line.split(":")[1]) for line in f if line.strip()]
        final = os.path.join(log_dir, "final.keras")
        assert os.path.isfile(final), stdout[-3000:]
        return dict(root=qs.root, synthetic=qs.synthetic, records=qs.records, log_dir=log_dir,
                    final_model=final, summary=returned["summary"], stdout=stdout,
                    val_pcks=val_pcks, seconds=seconds)

    result = _once(tmp_path_factory, "quickstart_run", build)
    return QuickstartRun(**{**result, "val_pcks": tuple(result["val_pcks"])})


@pytest.fixture(scope="session")
def quickstart_exports(quickstart_run, tmp_path_factory):
    """(folder, manifest) of every export variant of the quickstart model, written once per
    test run by ``python -m export`` in-process: TFLite float32, float16, dynamic, int8, int16x8
    and mixed (100 calibration crops, mixed's PCK selection on the next 200 train crops), then
    SavedModel plus float32 and int8 TFLite ending in the decoder (a second run into the same
    folder adds to its manifest). Tests copy what they change."""
    def build(out):
        import json

        from export.__main__ import main

        common = ["--model_path", quickstart_run.final_model, "--output_dir", out,
                  "--representative", quickstart_run.records, "--num_calibration", "100"]
        assert main(common + ["--format", "tflite", "--quantize", "none", "float16", "dynamic", "int8",
                              "int16x8", "mixed", "--num_selection", "200"]) == 0
        assert main(common + ["--format", "saved_model", "tflite", "--quantize", "none", "int8",
                              "--with_decoder"]) == 0
        with open(os.path.join(out, "export_manifest.json"), encoding="utf-8") as f:
            return {"out": out, "manifest": json.load(f)}

    result = _once(tmp_path_factory, "quickstart_exports", build)
    return result["out"], result["manifest"]


@pytest.fixture(scope="session")
def quickstart_verify(quickstart_run, quickstart_exports, tmp_path_factory) -> dict:
    """``python -m export.verify`` of the whole export folder on the quickstart val records
    (the report as json), run once per test run."""
    def build(out):
        import json

        from export.verify import main

        path = os.path.join(out, "report.json")
        assert main(["--models", quickstart_exports[0], "--tfrecords", quickstart_run.records,
                     "--split", "val", "--json", path, "--latency_runs", "2", "--rounds", "1"]) == 0
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    return _once(tmp_path_factory, "quickstart_verify", build)


QUICKSTART_FIXTURES = frozenset({"quickstart_records", "quickstart_run", "quickstart_exports",
                                 "quickstart_verify"})


# Seconds of one pytest worker per file in `make test` (2 cores, 2026-12-08; a file that uses
# the quickstart without its wait for it), and of its `processes` tests in `make
# test-processes`. Only the order of the tests depends on them.
FILE_SECONDS = {"test_resume_identity": 58, "test_model": 55, "test_learn_human": 41,
                "test_learn_real": 23, "test_metrics_torso": 22, "test_parser": 17,
                "test_input_reader": 14, "test_affine": 9, "test_oracle_ap": 8,
                "test_records_integrity": 4, "test_convert": 3,
                "test_export_pipeline": 97, "test_model_card": 37, "test_export_quant": 32,
                "test_run": 19, "test_tracking": 18, "test_predict_safety": 13}
PROCESS_SECONDS = {"test_resume_identity": 106, "test_data_service": 70,
                   "test_records_integrity": 32, "test_model": 14, "test_convert": 6,
                   "test_convert_lsp": 5, "test_input_reader": 4}


@pytest.hookimpl(trylast=True)          # after -m / -k deselected what this run does not run
def pytest_collection_modifyitems(config, items):
    """Order of the tests: the export tests first, so that one worker trains the quickstart and
    writes its exports at once (the longest chain); then the files that do not need it, the
    longest first (``FILE_SECONDS``; ``PROCESS_SECONDS`` for the ``processes`` tests), so
    that the other worker is busy meanwhile; then the files that use the quickstart, the
    longest first, so that the two workers end together. pytest-xdist keeps this order with
    ``--no-loadscope-reorder`` (``make test``); by default it sends the files with the most
    tests first."""
    def uses_quickstart(item) -> bool:
        return bool(QUICKSTART_FIXTURES & set(item.fixturenames))

    consumers = {item.module.__name__ for item in items if uses_quickstart(item)}
    # a file's seconds: those of its parts selected here (make test, make test-processes or both)
    parts = {(item.module.__name__, bool(item.get_closest_marker("processes"))) for item in items}
    seconds: dict[str, float] = {}
    for module, processes in parts:
        table = PROCESS_SECONDS if processes else FILE_SECONDS
        seconds[module] = seconds.get(module, 0.0) + table.get(module.rsplit(".", 1)[-1], 0.0)

    def rank(item) -> tuple[int, float]:
        module = item.module.__name__
        if module == "tests.test_export":
            return 0, 0.0
        return (2 if module in consumers else 1), -seconds[module]

    items[:] = sorted(items, key=rank)      # stable: the order inside a file is kept
