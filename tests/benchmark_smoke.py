"""What the learning benchmarks' smoke tests share: one few-step run of a benchmark's
``main`` and the reading of its greppable ``key: value`` lines."""
from __future__ import annotations

import contextlib
import io

SMOKE_ARGS = ["--steps", "3", "--input_size", "32", "--num_stacks", "1", "--mobile",
              "--batch_size", "4", "--epochs", "1"]


def smoke_run(main, out: str) -> str:
    """stdout of ``main`` (a benchmark's) run with a 3-step, 32x32 one-stack model into `out`."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(SMOKE_ARGS + ["--out", out])
    assert rc == 0, buffer.getvalue()[-3000:]
    return buffer.getvalue()


def greppable(stdout: str, keys) -> dict:
    """{key: float} of the lines ``key: value`` whose key is one of `keys`."""
    values = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in keys:
            values[key] = float(value)
    return values
