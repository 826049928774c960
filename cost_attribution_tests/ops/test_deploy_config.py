"""Fast static checks of the deployment files (the full stack runs in test_deploy.py):
deploy/dagster.yaml validates against Dagster's instance schema with the limits the
DuckDB warehouse needs, and docker-compose.yml wires the four services together."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_instance_config_validates_with_pool_and_queue_limits(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "u",
                        "DAGSTER_PG_PASSWORD": "p", "DAGSTER_PG_DB": "d",
                        "DAGSTER_COMPUTE_LOG_DIR": str(tmp_path / "logs")}.items():
        monkeypatch.setenv(name, value)
    shutil.copy(REPO / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 2
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}


def test_compose_wires_postgres_user_code_webserver_daemon():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
    assert "healthcheck" in services["postgres"]
    assert services["user_code"]["command"][:5] == ["dagster", "api", "grpc", "-m", "cost_attribution.definitions"]
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"
    # The warehouse volume is shared by whoever writes DuckDB (run workers start from user_code).
    assert any(v.startswith("warehouse:") for v in services["user_code"]["volumes"])
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["host"] == "user_code"
    dev = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert dev["load_from"][0]["python_module"]["module_name"] == "cost_attribution.definitions"
