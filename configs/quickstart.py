"""The quickstart recipe as data. Its one source is the Makefile's ``quickstart`` target (the
lines a user types, shown again in the README): ``makefile_quickstart`` reads it (one command
a line, variables expanded, ``$(PY)`` -> ``python``); ``quickstart_lines`` picks the lines of
one program with ``quickstart_out`` replaced by another folder. Tests and benchmarks that
train "the quickstart" run these lines, so they train exactly what ``make quickstart`` trains.
"""
from __future__ import annotations

import os
import re
import shlex

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


def quickstart_lines(program: str, root: str, mode: str | None = None) -> list[list[str]]:
    """argv (after the program) of every recipe line running `program` ("-m pipeline.synthetic",
    "convert_to_tfrecord.py", "run.py"; with `mode`, those whose argv starts with it), with
    quickstart_out -> `root`. ValueError when there is none."""
    lines = []
    for command in makefile_quickstart():
        words = shlex.split(command)
        prog, argv = (" ".join(words[1:3]), words[3:]) if words[1] == "-m" else (words[1], words[2:])
        if prog == program and (mode is None or argv[:1] == [mode]):
            lines.append([w.replace(QS, root) if QS in w else w for w in argv])
    if not lines:
        raise ValueError(f"no `python {program}` line in the Makefile's quickstart")
    return lines
