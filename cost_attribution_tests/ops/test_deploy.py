"""The deployment, without Docker: Debian's PostgreSQL + `dagster api grpc` +
dagster-webserver + dagster-daemon, all on loopback, all reading deploy/dagster.yaml
(Postgres storage, QueuedRunCoordinator limits, pool "warehouse" = 1 slot).

Through the GraphQL API it launches one run and a backfill over every partition of a
small simulated world (asset backfill: the single-run span ingest first, then runs per
day for the as-of analyses, launched together under max_concurrent_runs), waits for
success, and checks that the backfill left the warehouse exactly as a sequential
`cost-attribution run` does: DuckDB's single writer is protected by the pool, not by
luck. The queued-run coordinator holds a run whose first steps need the full pool, so
day runs mostly queue behind each other rather than interleave.

Two days are enough to launch day runs side by side. Most of the test's time is
waiting, not work (a 3-day backfill: 13 runs, 759 s wall, under 6 CPU-minutes): each
run's worker imports the code location, and the backfill daemon submits the next
runs on its fixed 30 s tick. Ticking the test's daemon faster was tried: it submits
smaller runs more often (21 runs for two days against 13 for three) and took longer. CI runs
this test beside the main suite for that reason (.ci/run).

Run: `.venv/bin/python -m pytest cost_attribution_tests/ops/test_deploy.py -m deploy -q`
(or deploy/run_deploy_test.sh). Needs the `postgresql` Debian package.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from cost_attribution_tests.ops.conftest import free_port
from cost_attribution_tests.ops.warehouse_snapshot import assert_same_warehouse, warehouse_snapshot

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCATION = "cost_attribution"
BACKFILL_DAYS = int(os.environ.get("COST_ATTRIBUTION_DEPLOY_TEST_DAYS", "2"))


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs tests as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    def __init__(self, root: Path, password: str):
        self.bin = _pg_bin()
        self.root, self.password, self.port = root, password, free_port()
        self.data = root / "data"

    def start(self):
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        subprocess.run(
            _as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "dagster", "--auth=scram-sha-256",
                          f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True,
        )
        subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w",
                          "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data} "
                          "-c fsync=off", "start"]),
            check=True, capture_output=True,
        )
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "dagster", "dagster"],
            check=True, capture_output=True, env={**os.environ, "PGPASSWORD": self.password},
        )

    def stop(self):
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       capture_output=True)


class Services:
    """The three Dagster processes, each in its own process group so teardown kills workers too."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def spawn(self, name: str, cmd: list[str]):
        log = open(self.logs / f"{name}.log", "w")
        self.procs.append((name, subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True)))

    def check_alive(self):
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 60) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-n:])

    def stop(self):
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait(what: str, probe, timeout: float, services: Services, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check_alive()
        try:
            value = probe()
            if value:
                return value
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise AssertionError(payload["errors"])
    return payload["data"]


ASSET_NODES = "{ assetNodes { assetKey { path } } }"
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numCancelable }
    ... on PythonError { message }
  }
}
"""
BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status startTime endTime tags { key value } } }
  }
}
"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    if _pg_bin() is None:
        pytest.skip("PostgreSQL server binaries missing: apt-get install -y postgresql")
    from cost_attribution.simulator import generate_world, small_world_config

    base = tmp_path_factory.mktemp("deploy")
    landing, warehouse = base / "landing", base / "warehouse" / "warehouse.duckdb"
    warehouse.parent.mkdir()
    config = dataclasses.replace(
        small_world_config(seed=5), trace_days=BACKFILL_DAYS, pre_period_days=0, n_members=300,
        target_spans_per_day=1500,
    )
    generate_world(landing, config)
    days = sorted(p.name.removeprefix("dt=") for p in (landing / "traces").iterdir())

    home = base / "dagster_home"
    (home / "compute_logs").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    # postgres must be able to reach its data dir: a fresh dir directly under /tmp.
    pg_root = Path(tempfile.mkdtemp(prefix="cost-attribution-pg-", dir="/tmp"))
    postgres = Postgres(pg_root, password="deploy-test-secret")
    grpc_port, web_port = free_port(), free_port()
    (home / "workspace.yaml").write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {grpc_port}\n"
        f"      location_name: {LOCATION}\n"
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        "DAGSTER_COMPUTE_LOG_DIR": str(home / "compute_logs"),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": postgres.password,
        "DAGSTER_PG_DB": "dagster",
        "COST_ATTRIBUTION_LANDING": str(landing),
        "COST_ATTRIBUTION_WAREHOUSE": str(warehouse),
        "COST_ATTRIBUTION_START_DATE": days[0],
    }
    services = Services(env, base)
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, pg_root, ignore_errors=True)
        cleanup.callback(postgres.stop)
        postgres.start()
        subprocess.run(["bash", str(REPO / "deploy" / "init_instance.sh")], cwd=REPO, env=env, check=True,
                       capture_output=True)
        cleanup.callback(services.stop)
        services.spawn("grpc", [str(BIN / "dagster"), "api", "grpc", "-m", "cost_attribution.definitions",
                                "-h", "127.0.0.1", "-p", str(grpc_port)])
        _wait("the gRPC server", lambda: subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(grpc_port)],
            env=env, capture_output=True).returncode == 0, 240, services, interval=2)
        workspace = str(home / "workspace.yaml")
        services.spawn("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port),
                                     "-w", workspace])
        services.spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace])
        _wait("the webserver", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{web_port}/server_info", timeout=5).status == 200, 180, services)
        _wait("the code location", lambda: _graphql(web_port, ASSET_NODES)["assetNodes"], 180, services)
        yield {"port": web_port, "days": days, "landing": landing, "warehouse": warehouse, "env": env,
               "services": services, "base": base, "home": home}


def _instance(deployment):
    """The same instance the services use (Postgres), opened from the test process."""
    import dagster as dg

    from cost_attribution import environment

    with environment.overridden({k: v for k, v in deployment["env"].items() if k.startswith("DAGSTER_")}):
        return dg.DagsterInstance.get()


def test_run_through_graphql_client(deployment):
    from dagster_graphql import DagsterGraphQLClient

    started = time.monotonic()
    client = DagsterGraphQLClient("127.0.0.1", port_number=deployment["port"])
    catalogs = ["experiments", "services", "allocations", "focus_costs", "usage_metrics"]
    run_id = client.submit_job_execution(
        "daily_cost_attribution", repository_location_name=LOCATION, asset_selection=catalogs,
        tags={"dagster/partition": deployment["days"][-1]},
    )
    status = _wait("the run", lambda: (s := client.get_run_status(run_id).value) in TERMINAL and s,
                   600, deployment["services"], interval=2)
    assert status == "SUCCESS", deployment["services"].tail("daemon")
    # The Great Expectations input contracts ran in the deployed run, against Postgres storage.
    import dagster as dg

    with _instance(deployment) as instance:
        for asset in catalogs:
            record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey(asset), "input_contract"))
            assert record is not None and record.run_id == run_id
            evaluation = record.event.dagster_event.event_specific_data
            assert evaluation.passed, evaluation.metadata
    print(f"\nrun through GraphQL: {time.monotonic() - started:.1f}s")


def test_concurrent_backfill_matches_sequential_run(deployment, tmp_path):
    started = time.monotonic()
    port, days = deployment["port"], deployment["days"]
    keys = [node["assetKey"] for node in _graphql(port, ASSET_NODES)["assetNodes"]]
    launched = _graphql(port, LAUNCH_BACKFILL, {"params": {"partitionNames": days, "assetSelection": keys}})
    result = launched["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    backfill_id = result["backfillId"]

    def finished():
        status = _graphql(port, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        return status if status in {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"} else None

    status = _wait("the backfill", finished, 1500, deployment["services"], interval=3)
    runs = _graphql(port, BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
    failed = [r["runId"] for r in runs if r["status"] != "SUCCESS"]
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"} and not failed, (status, failed, deployment["services"].tail("daemon"))
    # One bulk run for the span-level assets, then one run per day: several ran at once.
    assert len(runs) >= len(days)
    intervals = sorted((r["startTime"], r["endTime"]) for r in runs)
    overlaps = sum(1 for (_, end), (start, _) in zip(intervals, intervals[1:]) if start < end)
    backfill_seconds = time.monotonic() - started
    print(f"\nbackfill of {len(days)} days: {len(runs)} runs, {overlaps} overlapping, {backfill_seconds:.1f}s")

    # The same landing zone, materialized sequentially in-process, must give the same tables.
    sequential = tmp_path / "sequential" / "warehouse.duckdb"
    env = {k: v for k, v in deployment["env"].items() if not k.startswith("DAGSTER_")}
    subprocess.run([str(BIN / "cost-attribution"), "run", "--landing", str(deployment["landing"]),
                    "--warehouse", str(sequential)], cwd=REPO, env=env, check=True, capture_output=True)
    assert_same_warehouse(warehouse_snapshot(deployment["warehouse"]), warehouse_snapshot(sequential))
