"""The quickstart trained in this process, for benchmarks that need a trained model: the
Makefile's first four quickstart lines (``configs.quickstart``: the synthetic set, its
TFRecords, ``run.py train`` with QS_MODEL / QS_TRAIN) through the programs' own ``main(argv)``.
"""
from __future__ import annotations

import os

from configs.quickstart import quickstart_lines


def train_quickstart(root: str) -> str:
    """Run the quickstart's data and training lines into `root` (a relaunch resumes the
    training there); returns ROOT/logs/final.keras. RuntimeError naming the line that failed."""
    import convert_to_tfrecord
    import run
    from pipeline import synthetic

    def call(main, argv, what):
        code = main(argv)
        if code not in (0, None):
            raise RuntimeError(f"{what} {' '.join(argv)}: exit {code}")

    call(synthetic.main, quickstart_lines("-m pipeline.synthetic", root)[0], "python -m pipeline.synthetic")
    for argv in quickstart_lines("convert_to_tfrecord.py", root):
        call(convert_to_tfrecord.main, argv + ["--num_workers", "1", "--quiet"], "convert_to_tfrecord.py")
    argv = quickstart_lines("run.py", root, mode="train")[0]
    call(run.main, argv, "run.py")
    final = os.path.join(argv[argv.index("--log_dir") + 1], "final.keras")
    if not os.path.isfile(final):
        raise RuntimeError(f"run.py {' '.join(argv)} wrote no {final}")
    return final
