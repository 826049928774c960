# Two commands: `make demo` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export COST_ATTRIBUTION_LANDING ?= $(CURDIR)/demo/landing
export COST_ATTRIBUTION_WAREHOUSE ?= $(CURDIR)/demo/warehouse.duckdb
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo dev test test-fast test-deploy test-spark bench clean update-snapshot

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

# dbt's manifest is what the Dagster asset graph is built from: re-parse whenever a
# model changes (a few seconds), so the graph never lags the SQL.
MANIFEST := dbt_project/target/manifest.json
$(MANIFEST): $(STAMP) $(shell find dbt_project/models dbt_project/macros -type f 2>/dev/null) dbt_project/dbt_project.yml
	cd dbt_project && COST_ATTRIBUTION_WAREHOUSE=$${TMPDIR:-/tmp}/cost-attribution-parse.duckdb ../$(BIN)/dbt parse --quiet --profiles-dir .
	touch $(MANIFEST)

install: $(STAMP) $(MANIFEST)

## Generate the embedded demo world, materialize everything through Dagster, print the report.
demo: install
	@mkdir -p $(DAGSTER_HOME)
	@$(BIN)/cost-attribution demo --dir demo

## The Dagster UI on http://127.0.0.1:3000 over the demo world (run `make demo` first for data).
dev: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The suite runs on TEST_WORKERS processes, a test module per worker (module fixtures build
# their world once): the end-to-end worlds of the slow tests then build two at a time.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

test: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not deploy and not spark"

## PostgreSQL + dagster api grpc + webserver + daemon on loopback, with deploy/dagster.yaml.
test-deploy: install
	$(BIN)/python -m pytest -q -m deploy

## The dbt span models on a local Spark session, compared row for row with DuckDB.
test-spark: install
	$(BIN)/pip install -q -e ".[spark]"
	$(BIN)/python -m pytest -q -m spark

test-fast: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not deploy and not spark and not slow"

## After a deliberate change to the asset graph: rewrite the definitions snapshot, then review its diff.
update-snapshot: install
	UPDATE_SNAPSHOT=1 $(BIN)/python -m pytest -q cost_attribution_tests/pipeline/test_definitions_snapshot.py

bench: install
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_stats.py
	$(BIN)/python bench/bench_models.py

clean:
	rm -rf demo .dagster_home dbt_project/target dbt_project/logs
