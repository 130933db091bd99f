"""pytest plugin: the quickstart, trained once per test session by the real trainer.

``quickstart_records`` runs the first three lines of the Makefile's ``quickstart`` recipe (the
synthetic set, its conversion to TFRecords with --verify) and ``quickstart_run`` the fourth
(``run.py train`` with QS_MODEL / QS_TRAIN), all in this process through the programs' own
``main(argv)``, with ``quickstart_out`` replaced by a session temp folder. The commands are
read from the Makefile, so the tests train exactly what a user's ``make quickstart`` trains.

Tests that need "some trained model" use ``quickstart_run.final_model``; they must not write
into its folders (copy first): every test of the session shares them.
Registered in tests/conftest.py with ``pytest_plugins = ["tests.trained_model"]``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QS = "quickstart_out"


def makefile_quickstart() -> list[str]:
    """The Makefile's quickstart recipe, one command a line, variables expanded, $(PY) -> python."""
    with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
        text = f.read()
    variables = dict(re.findall(r"^(\w+) \?= (.*)$", text, flags=re.M))
    recipe = text[text.index("\nquickstart:") + 1:].split("\n\n")[0].splitlines()[1:]
    out = []
    for line in recipe:
        line = line.strip()
        if line.startswith("@"):
            continue
        line = line.replace("$(PY)", "python")
        for _ in range(3):
            line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
        out.append(re.sub(r"\s+", " ", line).strip())
    return out


def quickstart_argv(program: str, root: str, mode: str | None = None) -> list[str]:
    """argv (after the program) of the first recipe line running `program` ("-m pipeline.synthetic",
    "convert_to_tfrecord.py", "run.py"; with `mode`, the first whose argv starts with it), with
    quickstart_out -> `root`. Several lines may run one program: see ``_quickstart_lines``."""
    return _quickstart_lines(program, root, mode)[0]


def _quickstart_lines(program: str, root: str, mode: str | None = None) -> list[list[str]]:
    lines = []
    for command in makefile_quickstart():
        words = shlex.split(command)
        assert words[0] == "python", command
        prog, argv = (" ".join(words[1:3]), words[3:]) if words[1] == "-m" else (words[1], words[2:])
        if prog == program and (mode is None or argv[:1] == [mode]):
            lines.append([w.replace(QS, root) if QS in w else w for w in argv])
    assert lines, f"no `python {program}` line in the Makefile's quickstart"
    return lines


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


@pytest.fixture(scope="session")
def quickstart_records(tmp_path_factory) -> QuickstartRecords:
    """The quickstart's synthetic set (800 train / 100 val, 192x192) and its TFRecords."""
    import convert_to_tfrecord
    from pipeline import synthetic

    root = str(tmp_path_factory.mktemp(QS))
    t0 = time.time()
    _call(synthetic.main, quickstart_argv("-m pipeline.synthetic", root), "pipeline.synthetic")
    for argv in _quickstart_lines("convert_to_tfrecord.py", root):
        # one worker: the same records (the converter's output does not depend on the worker
        # count) without spawning interpreters that import the pipeline again
        _call(convert_to_tfrecord.main, argv + ["--num_workers", "1", "--quiet"], "convert_to_tfrecord.py")
    return QuickstartRecords(root=root, synthetic=os.path.join(root, "synthetic"),
                             records=os.path.join(root, "tfrecords"), seconds=round(time.time() - t0, 1))


@pytest.fixture(scope="session")
def quickstart_run(quickstart_records) -> QuickstartRun:
    """The quickstart model: `run.py train` with the Makefile's QS_MODEL and QS_TRAIN (700 steps),
    trained once per session in this process."""
    import run
    from model import cli

    qs = quickstart_records
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
        val_pcks = tuple(float(line.split(":")[1]) for line in f if line.strip())
    final = os.path.join(log_dir, "final.keras")
    assert os.path.isfile(final), stdout[-3000:]
    return QuickstartRun(root=qs.root, synthetic=qs.synthetic, records=qs.records, log_dir=log_dir,
                         final_model=final, summary=returned["summary"], stdout=stdout,
                         val_pcks=val_pcks, seconds=seconds)


@pytest.fixture(scope="session")
def quickstart_exports(quickstart_run, tmp_path_factory):
    """(folder, manifest) of every export variant of the quickstart model, written once per
    session by ``python -m export`` in this process: TFLite float32, float16, dynamic, int8
    (100 calibration crops), then SavedModel plus float32 and int8 TFLite ending in the decoder
    (a second run into the same folder adds to its manifest)."""
    import json

    from export.__main__ import main

    out = str(tmp_path_factory.mktemp("exported"))
    common = ["--model_path", quickstart_run.final_model, "--output_dir", out,
              "--representative", quickstart_run.records, "--num_calibration", "100"]
    assert main(common + ["--format", "tflite", "--quantize", "none", "float16", "dynamic", "int8"]) == 0
    assert main(common + ["--format", "saved_model", "tflite", "--quantize", "none", "int8",
                          "--with_decoder"]) == 0
    with open(os.path.join(out, "export_manifest.json"), encoding="utf-8") as f:
        return out, json.load(f)
