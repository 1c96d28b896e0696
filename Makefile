# `make demo` and `make test` work on a fresh machine with only Python >= 3.10 installed:
# they create .venv on first use and install the pinned CPU build of PyTorch plus this package.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH_PIN = torch==2.13.0
# --strict: a broken link, a missing page or a docstring the API reference cannot read fails.
MKDOCS  = NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

.PHONY: demo test test-slow lint docs venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,bench,hf,sklearn,docs]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m performers demo

# The tests run on every core (pytest-xdist; worksteal: an idle worker takes queued tests from a
# busy one, so a few long tests at the end do not leave a core idle), one torch thread per worker.
test: $(VENV)/.installed
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(VENV)/bin/lint-imports
	$(MKDOCS) --site-dir site
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow"

# The long end-to-end tests (marked slow): every benchmark run end to end at tiny sizes and the
# installed wheel. CI runs them after `make test` (.ci/run); `make test` stays a short loop.
test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist worksteal -m slow

# The documentation site (README-linked guides under docs/ and the API reference) into site/.
docs: $(VENV)/.installed
	$(MKDOCS) --site-dir site

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) site build dist *.egg-info src/*.egg-info .pytest_cache .import_linter_cache
