# Every target creates the virtual environment first when it is missing (or pyproject.toml changed).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hrexp-installed

.PHONY: help venv train test test-slow test-extended test-all bench clean

help:
	@echo "make train      set up, then train the default experiment (HRNet-W32 landmarks on synthetic spines)"
	@echo "make test       set up, then run the test suite (fast; slow end-to-end checks excluded)"
	@echo "make test-slow  set up, then run CI's slow end-to-end checks (each path once: train, resume, DDP, sweep, ...)"
	@echo "make test-extended  set up, then run the slow checks CI leaves out (the full default job, Kvasir, ...)"
	@echo "make test-all   all three"
	@echo "make bench      set up, then run the benchmark suite (tables in benchmarks/results/; tens of minutes)"

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py model=hrnet_w32 task=landmarks $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" --durations=15 $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not extended" --durations=15 $(ARGS)

test-extended: $(STAMP)
	$(PY) -m pytest -m extended --durations=15 $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
