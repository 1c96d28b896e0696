# `make demo` and `make test` work on a fresh machine with only Python >= 3.10 installed:
# they create .venv on first use and install the pinned CPU build of PyTorch plus this package.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH_PIN = torch==2.13.0

.PHONY: demo test lint venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,bench,hf,sklearn]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m performers demo

test: $(VENV)/.installed
	$(PY) -m ruff check src tests
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache .import_linter_cache
