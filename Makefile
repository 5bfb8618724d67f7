# One entry point per task. `make run` starts the gateway on local defaults; `make test` runs
# lint, types and the tests. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export METERING_ADMIN_KEY ?= dev-admin-key

PROXY_VENV ?= .venv-proxy
export METERING_PROXY_BIN ?= $(abspath $(PROXY_VENV))/bin/litellm

.PHONY: install proxy-venv lock services test-services run lint types pytest pytest-dates test \
	bench locust clean

# The tests whose outcome depends on where the clock stands, run again at each starting point of
# tests/conftest.py START_POINTS (a year back, a year ahead, a month's and a year's last second,
# the last second of 29 Feb 2028), on one Redis: the suite passes on any date.
DATED_TESTS := tests/test_reservations.py tests/test_periods.py tests/test_refunds.py \
	tests/test_block_expiry.py tests/test_renewal.py \
	tests/test_coupons.py tests/test_webhooks.py tests/test_history.py tests/test_scripts.py \
	tests/test_clock.py
START_POINTS := year-ago year-ahead month-end new-year leap-day

# Installs are reproducible: every package at the version requirements/*.lock pins (`make lock`
# refreshes the locks after a change to the projects' dependencies; `make lock UPGRADE=1` moves
# every pin to the newest release the projects allow).
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps -e . -e clients/python
	touch $@

# The real LiteLLM proxy, as an LLM team installs it: its own environment holding the proxy and
# metering-client built from clients/python (not editable: what pip would install).
$(PROXY_VENV)/.installed: clients/python/proxy-requirements.txt requirements/proxy.lock
	$(PYTHON) -m venv $(PROXY_VENV)
	$(PROXY_VENV)/bin/python -m pip install -q --upgrade pip
	$(PROXY_VENV)/bin/python -m pip install -q -r requirements/proxy.lock
	touch $@

$(PROXY_VENV)/.client: $(PROXY_VENV)/.installed clients/python/pyproject.toml \
		$(wildcard clients/python/metering_client/*.py clients/python/metering_client/*/*.py)
	$(PROXY_VENV)/bin/python -m pip install -q --no-deps --force-reinstall ./clients/python
	rm -rf clients/python/build
	touch $@

proxy-venv: $(PROXY_VENV)/.client

# The locks, resolved with uv (installed into the venv for this): the server with its dev extra
# and the client with its aiohttp extra; the proxy's environment (proxy-requirements.txt and the
# client with its litellm extra). Resolution prefers the current pins unless UPGRADE=1.
LOCK := $(BIN)/uv pip compile --python-version 3.11 -q $(if $(UPGRADE),--upgrade)
lock: install
	$(BIN)/python -m pip install -q uv
	$(LOCK) pyproject.toml clients/python/pyproject.toml --extra dev --extra aiohttp \
		-o requirements/dev.lock
	$(LOCK) clients/python/proxy-requirements.txt clients/python/pyproject.toml \
		--extra litellm --extra aiohttp -o requirements/proxy.lock

install: $(VENV)/.installed

services:
	.ci/services

test-services:
	.ci/services --tests

run: install services
	$(BIN)/metering serve --host 127.0.0.1 --port 8000

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

pytest: install test-services proxy-venv
	$(BIN)/pytest

pytest-dates: install test-services
	@for start in $(START_POINTS); do \
		echo "== tests with the clock starting at $$start"; \
		METERING_TEST_START=$$start $(BIN)/pytest -q -k "not cluster" \
			$(DATED_TESTS) || exit 1; \
	done

test: lint types pytest pytest-dates

bench: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench

locust: install
	$(BIN)/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s \
		--host $${METERING_URL:-http://127.0.0.1:8000}

clean:
	rm -rf $(VENV) $(PROXY_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
