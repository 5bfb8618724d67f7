# One entry point per task. `make run` starts the gateway on local defaults; `make test` runs
# lint, types and the tests. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export METERING_ADMIN_KEY ?= dev-admin-key

.PHONY: install services run lint types pytest test bench locust clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

services:
	.ci/services

run: install services
	$(BIN)/metering serve --host 127.0.0.1 --port 8000

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

pytest: install services
	$(BIN)/pytest

test: lint types pytest

bench: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench

locust: install
	$(BIN)/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s \
		--host $${METERING_URL:-http://127.0.0.1:8000}

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
