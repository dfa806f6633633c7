# Two commands for a fresh machine:  `make demo` (runs the main job) and `make test` (the test suite).
# Each creates .venv and installs what it needs. On a machine without a GPU the CPU build of torch is
# installed first (pip takes torch==2.13.0 from a local wheel where one lies; elsewhere it comes from
# PyTorch's CPU index), so pip never pulls a multi-GB CUDA build. A user with a GPU keeps their torch:
# create .venv with it first, or set TORCH_SPEC to the build you want.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint format bench clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || \
	  $(PY) -m pip install -q "$(TORCH_SPEC)" || \
	  $(PY) -m pip install -q "$(TORCH_SPEC)" --index-url $(TORCH_INDEX)
	touch $@

$(VENV)/.installed: $(VENV)/.torch setup.cfg pyproject.toml
	$(PY) -m pip install -q -e ".[agents,test,similarity]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m agents.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/env_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
