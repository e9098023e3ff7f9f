# Every target creates the virtual environment first when it is missing (or pyproject.toml changed).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hrexp-installed
PEER   ?= .venv-peer

.PHONY: help venv peer-venv train test test-slow test-extended test-all bench clean

help:
	@echo "make train      set up, then train the default experiment (HRNet-W32 landmarks on synthetic spines)"
	@echo "make test       set up, then run the test suite (fast; slow end-to-end checks excluded)"
	@echo "make test-slow  set up, then run CI's slow end-to-end checks (each path once: train, resume, DDP, sweep, ...)"
	@echo "make test-extended  set up, then run the slow checks CI leaves out (the full default job, Kvasir, ...)"
	@echo "make test-all   all three"
	@echo "make peer-venv  set up .venv-peer: landmarker (the peer extra) on top of .venv, for scripts/landmarker_peer.py"
	@echo "make bench      set up, then run the benchmark suite (tables in benchmarks/results/; tens of minutes)"

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

# .venv-peer sees .venv's packages through a .pth file (site.addsitedir, so .venv's editable hrexp too) and
# holds only what the peer extra adds or pins differently (landmarker, monai, scipy<1.16).
peer-venv: $(PEER)/.hrexp-installed

$(PEER)/.hrexp-installed: $(STAMP)
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/python -c "import sysconfig, pathlib; main = '$(abspath $(VENV))/lib/python%s/site-packages' % sysconfig.get_python_version(); pathlib.Path(sysconfig.get_paths()['purelib'], 'zz-hrexp-venv.pth').write_text('import site; site.addsitedir(%r)\\n' % main)"
	$(PEER)/bin/python -m pip install -e ".[peer]"
	touch $@

train: $(STAMP)
	$(PY) train.py model=hrnet_w32 task=landmarks $(ARGS)

# The fast suite runs in TEST_WORKERS processes (pytest-xdist; each test file in one worker, so its module
# fixtures are built once) with one torch thread each: on 2 cores that took 8.7 min against 15.5 in one
# process, whose single-threaded half (imports, subprocesses, Python) left a core idle.
TEST_WORKERS ?= 2

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15 $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not extended" --durations=15 $(ARGS)

test-extended: $(STAMP)
	$(PY) -m pytest -m extended --durations=15 $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) $(PEER) .pytest_cache
