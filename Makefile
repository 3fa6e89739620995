# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first with an explicit pin (here the local CPU wheel), so pip never pulls a
# multi-GB CUDA build while resolving transformers/trl/peft. On a GPU machine: make install TORCH=torch
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(OFFLINE) $(BIN)/tunelab demo

test: install
	$(OFFLINE) $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks examples

clean:
	rm -rf outputs .pytest_cache
