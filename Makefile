# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first with an explicit pin (here the local CPU wheel), so pip never pulls a
# multi-GB CUDA build while resolving transformers/trl/peft. On a GPU machine: make install TORCH=torch
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install wordnet chromium demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed wordnet

# METEOR's synonym stage reads WordNet 3.0, which no Python package carries: Debian/Ubuntu's wordnet-base
# (installed here when this runs as root with apt-get). Without it tunelab still works; METEOR says it is missing.
wordnet:
	@if [ -f /usr/share/wordnet/data.noun ] || [ -n "$$WNSEARCHDIR" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing WordNet 3.0 (Debian's wordnet-base) for METEOR"; \
		apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1; } || \
		echo "note: could not install wordnet-base; METEOR will be reported as unavailable"; \
	else echo "note: WordNet is not installed, so METEOR will be reported as unavailable; on Debian/Ubuntu: sudo apt-get install wordnet-base"; fi

# The web UI's browser test drives Debian's chromium with Playwright (playwright install cannot download here);
# installed where this runs as root with apt-get. Without it that one test is skipped and says why.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the web UI's browser test"; \
		apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
		echo "note: could not install chromium; the browser test of the web UI will be skipped"; \
	else echo "note: chromium is not installed, so the web UI's browser test is skipped; on Debian/Ubuntu: sudo apt-get install chromium"; fi

demo: install
	$(OFFLINE) $(BIN)/tunelab demo

test: install chromium
	$(OFFLINE) $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks examples

clean:
	rm -rf outputs .pytest_cache
