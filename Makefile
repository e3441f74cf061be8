# Two commands on a fresh machine: `make demo` and `make test` (each installs into .venv if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdirs/demo

.PHONY: install demo test test-all bench lint clean

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m procedural_pretraining.main --config=configs/demo.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/generators.py
	$(PY) benchmarks/diagnostic_speed.py --steps=50 --seeds=10

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf workdirs .pytest_cache
