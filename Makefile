# The two commands of the README: `make demo` and `make test`. Both start with `make install`,
# which is idempotent and quick when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed
PYPROJECTS := pyproject.toml uv.lock contracts/pyproject.toml gateway/pyproject.toml deploy/pyproject.toml $(wildcard services/*/pyproject.toml)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install demo test test-fast cluster-test lint asyncapi docs lock clean i18n

install: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): $(UV) $(PYPROJECTS)
	$(UV) sync --frozen --all-packages --python $(PYTHON)
	touch $(STAMP)

demo: install
	$(VENV)/bin/portal up --demo

# Test files run side by side, one per core (most of their time is spent waiting on processes
# and brokers starting); the few that hold the machine to a deadline run afterwards, alone.
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(TEST_ARGS)
	$(VENV)/bin/python -m pytest -m serial $(TEST_ARGS)

# The portal on many machines, on this one (tests/cluster): a 3-server NATS cluster, PostgreSQL, two
# replicas of every part and two gateways, under load and faults; prints what clients saw. A few
# minutes; needs the machine's PostgreSQL.
cluster-test: install
	$(VENV)/bin/python -m pytest tests/cluster -s -p no:cacheprovider $(CLUSTER_ARGS)

# ruff (lint and format check) and mypy over every package; configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-fast: install
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# Trust-scale figures of the overview (bench/overview.py prints a table): half an hour or less,
# needs wrk (Debian) and the machine's PostgreSQL. Not a test: nothing fails on slow figures.
.PHONY: bench
bench: install
	$(VENV)/bin/python bench/overview.py $(BENCH_ARGS)
	$(VENV)/bin/python tests/bench/bench_linking_uptake.py
	$(VENV)/bin/python bench/digest.py

# Staff at trust scale (tests/bench/bench_staff_at_scale.py prints each time): 1,000 bulk invitations
# through the gateway, and `portal roster import` (--full too) of 20 schools and 10,000 pupils. Several
# minutes, most of them the roster imports.
.PHONY: bench-staff
bench-staff: install
	$(VENV)/bin/python tests/bench/bench_staff_at_scale.py

# Throughput per core of each part on a 3-server NATS cluster and PostgreSQL (bench/cluster_throughput.py
# prints a table; docs/scaling.md sizes a deployment from it): about 5 minutes, needs wrk.
.PHONY: bench-cluster
bench-cluster: install
	$(VENV)/bin/python bench/cluster_throughput.py $(BENCH_ARGS)

# Regenerate the committed AsyncAPI documents (a test fails while they are stale).
asyncapi: install
	for s in identity linking notify overview; do $(VENV)/bin/python -m $$s asyncapi --out services/$$s/asyncapi.json; done

# Regenerate the committed reference pages under docs/reference/ from the code: the OpenAPI
# document, the requests and events of contracts/, the settings classes, the portal commands
# (a test fails while one is stale).
docs: install
	$(VENV)/bin/python -m portal.docs --out docs/reference

# The Welsh (and any other) message catalogues of the packages that render text: extract the
# English source strings, update each language's .po (translations are written there, by hand),
# compile the .mo the packages load. Both are committed; a test fails while a .mo is stale or a
# string has no translation.
I18N_PACKAGES := gateway/src/gateway services/notify/src/notify services/linking/src/linking
I18N_LANGUAGES := cy
i18n: install
	for pkg in $(I18N_PACKAGES); do mkdir -p $$pkg/locale; \
	  $(VENV)/bin/pybabel -q extract -F babel.cfg -k N_ -k ntranslate:1,2 -k pgettext:1c,2 -k npgettext:1c,2,3 --no-location --sort-output \
	    --project "Parent Portal" --copyright-holder "Parent Portal" -o $$pkg/locale/messages.pot $$pkg || exit 1; \
	  for lang in $(I18N_LANGUAGES); do \
	    if [ -f $$pkg/locale/$$lang/LC_MESSAGES/messages.po ]; then \
	      $(VENV)/bin/pybabel -q update --no-fuzzy-matching --ignore-obsolete --ignore-pot-creation-date -i $$pkg/locale/messages.pot -d $$pkg/locale -l $$lang || exit 1; \
	    else \
	      $(VENV)/bin/pybabel -q init -i $$pkg/locale/messages.pot -d $$pkg/locale -l $$lang || exit 1; \
	    fi; \
	  done; \
	  $(VENV)/bin/pybabel -q compile -d $$pkg/locale || exit 1; \
	done

lock: $(UV)
	$(UV) lock --python $(PYTHON)

clean:
	rm -rf $(VENV) $(TOOLS)
