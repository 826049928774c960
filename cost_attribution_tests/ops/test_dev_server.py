"""`make dev` from a shell that never activated the venv: `dagster dev` with PATH holding
only the system's directories serves the UI with the code location loaded (dbt is found
beside the interpreter, not on PATH). Checked through the webserver's GraphQL API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cost_attribution_tests.ops.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message }
    ... on RepositoryLocation { repositories { name jobs { name } assetGroups { groupName } } } } } } } }"""


def _graphql(port: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": QUERY}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_dagster_dev_loads_the_code_location_without_the_venv_on_path(tmp_path):
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path),
        "COST_ATTRIBUTION_LANDING": str(tmp_path / "landing"),
        "COST_ATTRIBUTION_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    log = (tmp_path / "dev.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline, entry = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            try:
                entries = _graphql(port)["data"]["workspaceOrError"]["locationEntries"]
            except OSError:
                entries = []
            entry = entries[0] if entries else None
            if entry and entry["loadStatus"] == "LOADED":
                break
            time.sleep(2)
        assert entry and entry["loadStatus"] == "LOADED", (tmp_path / "dev.log").read_text()[-3000:]
        location = entry["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location.get("message")
        repository = location["repositories"][0]
        assert "daily_cost_attribution" in [job["name"] for job in repository["jobs"]]
        assert {"attribution", "estimation", "reporting"} <= {g["groupName"] for g in repository["assetGroups"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a loaded machine: dagster dev's children linger
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_definitions_validate_without_the_venv_on_path(tmp_path):
    """`dagster definitions validate` (the CLI's `dg check defs`) over workspace.yaml."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation successful for code location cost_attribution" in done.stderr + done.stdout
