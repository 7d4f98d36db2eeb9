# Every target installs what it needs into .venv (a fresh machine has no torch).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-pyro

.PHONY: install lint format test test-slow demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned to the CPU wheel this machine kind provides; pyproject keeps a range.
$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[pyro,numpyro,test,tutorials]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check fsbp pyro_fsbp numpyro_fsbp tests examples benchmarks tutorials
	$(BIN)/ruff format --check fsbp pyro_fsbp numpyro_fsbp tests examples benchmarks tutorials

format: install
	$(BIN)/ruff format fsbp pyro_fsbp numpyro_fsbp tests examples benchmarks tutorials
	$(BIN)/ruff check --fix fsbp pyro_fsbp numpyro_fsbp tests examples benchmarks tutorials

test: install
	$(BIN)/python -m pytest -q tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

demo: install
	$(BIN)/python examples/gamma_toy.py

bench: install
	$(BIN)/python benchmarks/variance.py
	$(BIN)/python benchmarks/discrete_variance.py
	$(BIN)/python benchmarks/numpyro_variance.py

clean:
	rm -rf $(VENV) build *.egg-info
