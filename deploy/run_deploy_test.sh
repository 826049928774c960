#!/usr/bin/env bash
# The deployment integration test (PostgreSQL + gRPC server + webserver + daemon on
# loopback, same deploy/dagster.yaml as docker-compose). Installs Debian's PostgreSQL
# server if it is missing (needs root, as in CI).
#   deploy/run_deploy_test.sh            # 3-day world
#   COST_ATTRIBUTION_DEPLOY_TEST_DAYS=7 deploy/run_deploy_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
exec .venv/bin/python -m pytest cost_attribution_tests/ops/test_deploy.py -m deploy -q -s "$@"
