# The README's two commands: `make run` (install, then the default pipeline) and `make test` (install, then tests).
# Installation happens once per requirements/pyproject content: a stamp file in the venv records it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
PARAMS ?= params/default.yaml

.PHONY: setup run smoke test test-fast bench lab serve clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

run: setup
	$(PY) -m wafersage_utils.runner.pipeline $(PARAMS)

smoke: setup
	$(PY) -m wafersage_utils.runner.pipeline params/smoke.yaml

test: setup
	$(PY) -m pytest -q

# The edit loop: everything but the tests that execute the smoke chain's notebooks (about 3 of the 12 minutes).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) tests/benchmarks/bench_tiny_model.py
	$(PY) tests/benchmarks/bench_seeing_inputs.py
	$(PY) tests/benchmarks/bench_features.py
	$(PY) tests/benchmarks/bench_render.py
	$(PY) tests/benchmarks/bench_serve.py
	$(PY) tests/benchmarks/bench_serve_soak.py

RUN ?= results/default
MODEL ?= sft
serve: setup
	$(PY) -m wafersage_utils.serving $(RUN) --model $(MODEL) --image-root $(RUN)

# Headless: prints the URL with its token instead of opening a browser; as root (containers) it needs --allow-root.
LAB_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ --no-browser $(LAB_ROOT)

clean-venv:
	rm -rf $(VENV)
