#!/usr/bin/env bash
# Idempotent instance setup run before the daemon starts: pin pool "warehouse" to one
# slot (DuckDB: one writer process) in the instance's storage.
set -euo pipefail
dagster instance migrate
dagster instance concurrency set warehouse 1
