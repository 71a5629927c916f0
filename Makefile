# Two commands do everything on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench check clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/omniroute demo

test: $(STAMP)
	$(BIN)/ruff check engine tests tools
	$(BIN)/mypy
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check engine tests tools
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m tools.bench

check: $(STAMP)
	$(BIN)/omniroute check -c config.example.yaml

clean:
	rm -rf $(VENV) data
