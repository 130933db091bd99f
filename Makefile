# Two commands set up a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QS ?= quickstart_out
SHARED ?= ../shared

.PHONY: install test quickstart lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check .

quickstart: $(STAMP)
	$(PY) -m pipeline.quickstart --out $(QS)

clean:
	rm -rf $(QS) build *.egg-info .pytest_cache
