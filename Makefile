# `make demo` runs the service on embedded defaults with a simulated ICE job; `make test` runs the suite.
# Both create .venv themselves; nothing else needs installing beyond Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: venv test lint demo bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check receiver tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: venv
	$(BIN)/receiver demo --port $(PORT)

bench: venv
	$(BIN)/python bench/thumbnails.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
