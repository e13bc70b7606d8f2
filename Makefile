# lenscat developer entry points. The README's two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test lint unit integration bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pin torch here only (the package says torch>=2.4): 2.13.0 is the CPU wheel; a looser spec pulls CUDA
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

# check_layout prints the package table and fails when the CLI or web shells hold SQL
lint: $(STAMP)
	$(BIN)/ruff check lenscat tests bench scripts
	$(BIN)/mypy lenscat tests bench
	$(BIN)/python scripts/check_layout.py

test: lint
	$(BIN)/python -m pytest tests -q --durations=30

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

bench: $(STAMP)
	$(BIN)/python bench/crossmatch.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
