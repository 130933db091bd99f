"""The README cannot rot: its quickstart block is the Makefile's quickstart recipe, and every
other command in it parses with the real command-line parser of the program it names."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex

import pytest

from configs.quickstart import makefile_quickstart

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", _read("README.md"), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def quickstart_block() -> list[str]:
    text = _read("README.md")
    section = text[text.index("## The quickstart"):text.index("## Recipes")]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_quickstart_block_is_the_makefile_recipe():
    assert quickstart_block() == makefile_quickstart()


class _Parsed(Exception):
    pass


def _entry_point(argv: list[str]):
    """(main function, its argv) for `python run.py …`, `python X.py …`, `python -m mod …`."""
    if argv[0] == "-m":
        module = importlib.import_module(argv[1])
        if not hasattr(module, "main"):
            module = importlib.import_module(argv[1] + ".__main__")
        return module.main, argv[2:]
    script = os.path.splitext(argv[0])[0]
    return importlib.import_module(script).main, argv[1:]


COMMANDS = [c for c in readme_commands() if re.match(r"^(\w+=\S+ )*python ", c)]


def test_readme_has_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, monkeypatch):
    words = shlex.split(command)
    while "=" in words[0]:
        words = words[1:]
    assert words[0] == "python"
    main, argv = _entry_point(words[1:])
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)   # a bad flag exits with status 2 here
        raise _Parsed()

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        main(argv)
