# Quick start: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench bench-http clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "execgate needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(VENV)/.installed
	$(BIN)/execgate demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The e2e proxy tests need nginx with auth_request (Envoy and Traefik are dev dependencies).
.PHONY: e2e-deps
e2e-deps:
	@if ! command -v nginx >/dev/null 2>&1 && ! test -x /usr/sbin/nginx; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	  else echo "e2e-deps: nginx is missing and this is neither root nor sudo: install nginx-light" >&2; exit 0; fi; \
	  $$sudo apt-get install -y nginx-light || { $$sudo apt-get update && $$sudo apt-get install -y nginx-light; }; \
	fi

unit: $(VENV)/.installed-dev e2e-deps
	$(BIN)/python -m pytest --cov --cov-report=term -q

test: lint typecheck unit

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/bench_decide.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_lineage.py

# Forward-auth over HTTP under load (wrk), next to the same stack's trivial endpoint and
# nginx auth_request; installs wrk (and nginx) from Debian's packages when missing.
bench-http: $(VENV)/.installed-dev e2e-deps
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	  $$sudo apt-get install -y wrk || { $$sudo apt-get update && $$sudo apt-get install -y wrk; }; }
	$(BIN)/python bench/bench_http.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
