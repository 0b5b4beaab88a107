# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: install run test lint pytest bench-quick system-deps clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# The CPU build of torch from local disk first, so nothing pulls a CUDA build.
	$(PIP) install torch==2.13.0
	# llama.cpp portable and uncached, before anything that depends on it (DESIGN.md, Models):
	# a native build crashed here, and pip's wheel cache would reuse one.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install --no-cache-dir "llama-cpp-python[server]==0.3.36"
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/chat-engine up

# Debian's chromium for the widget's browser tests (Playwright drives it; no browser download).
system-deps:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

# lint-imports: import direction and no import circles (pyproject.toml [tool.importlinter]).
lint: install
	$(VENV)/bin/ruff check runtime actors ingestion serve_app.py tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

pytest: install system-deps
	$(PY) -m pytest -x -q

bench-quick: install
	@for b in benchmarks/[!_]*.py; do echo "== $$b --quick"; $(PY) $$b --quick || exit 1; done

test: lint pytest bench-quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
