# Two commands set up a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QS ?= quickstart_out
SHARED ?= ../shared
QS_MODEL ?= --num_stacks 1 --mobile --tiny --model_image_size 96x96
QS_TRAIN ?= --batch_size 16 --optimizer adam --learning_rate 6e-3 --decay_type cosine --foreground_weight 10 --total_epoch 6 --seed 0

.PHONY: install test test-processes quickstart lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make test`: every test but the `processes` ones (a process of their own for signals, exit codes,
# several workers or a kill mid-write); `make test-processes` runs those, and CI (.ci/run) both.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not processes" tests

test-processes: $(STAMP)
	$(PY) -m pytest -n 2 --dist load --maxschedchunk 1 -m processes tests

lint: $(STAMP)
	$(PY) -m ruff check .

# The quickstart: each line below is a command a user types (the README shows the same lines).
quickstart: $(STAMP)
	@date +%s > $(QS).start 2>/dev/null || true
	$(PY) -m pipeline.synthetic --out $(QS)/synthetic --num_train 800 --num_val 100 --seed 0
	$(PY) convert_to_tfrecord.py --format coco --split train --num_shards 4 --annotations $(QS)/synthetic/annotations/person_keypoints_train.json --images $(QS)/synthetic/images/train --output $(QS)/tfrecords
	$(PY) convert_to_tfrecord.py --format coco --split val --num_shards 1 --annotations $(QS)/synthetic/annotations/person_keypoints_val.json --images $(QS)/synthetic/images/val --output $(QS)/tfrecords --verify
	$(PY) run.py train --tfrecords $(QS)/tfrecords --log_dir $(QS)/logs $(QS_MODEL) $(QS_TRAIN)
	$(PY) run.py eval --model_path $(QS)/logs/final.keras --tfrecords $(QS)/tfrecords --metrics_json $(QS)/eval_keras.json
	$(PY) -m export --model_path $(QS)/logs/final.keras --output_dir $(QS)/export --format tflite --quantize int8 --representative $(QS)/tfrecords
	$(PY) run.py eval --model_path $(QS)/export/final_int8.tflite --tfrecords $(QS)/tfrecords --metrics_json $(QS)/eval_int8.json
	$(PY) run.py predict --model_path $(QS)/export/final_int8.tflite --input $(QS)/synthetic/images/val/val_000001.jpg --output $(QS)/prediction.jpg
	$(PY) -m benchmarks.quickstart_report --out $(QS)

clean:
	rm -rf $(QS) $(QS).start build *.egg-info .pytest_cache
