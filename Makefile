# `make demo` runs the service on embedded defaults with a simulated ICE job; `make test` runs the suite.
# Both create .venv themselves; nothing else needs installing beyond Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: venv test unit lint demo bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check receiver tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Everything: lint, then unit, integration and end-to-end tests (PostgreSQL, Redis, Celery, browser, wheel).
test: lint
	$(BIN)/pytest

# The pure modules only (media, formats, config...): seconds, no server.
unit: venv
	$(BIN)/pytest tests/unit

demo: venv
	$(BIN)/receiver demo --port $(PORT)

bench: venv
	$(BIN)/python bench/thumbnails.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
