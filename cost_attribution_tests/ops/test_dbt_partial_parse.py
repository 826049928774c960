"""A daily dbt build must not parse the whole project again because the day changed: the
partition window, DuckDB's memory cap and whether busy time is computed reach dbt in its
environment, read only when a node compiles, so the parse dbt saved yesterday
(partial_parse.msgpack) still fits."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

from cost_attribution import environment
from cost_attribution.attribution.dbt_assets import dbt_build_env, dbt_vars
from cost_attribution.dbt_project import DBT_PROJECT_DIR, dbt_executable, keep_parse, prune_invocations, saved_parse_dir


def _dbt(command: list[str], target: Path, warehouse: Path, window: tuple[str, str], memory: str,
         busy_time: bool = False) -> list[dict]:
    # The environment the span_models asset gives a dbt build (dbt_build_env), and the memory cap.
    build_env = dbt_build_env(*(dt.date.fromisoformat(day) for day in window), busy_time)
    env = {**os.environ, **build_env, environment.MEMORY_LIMIT_ENV: memory,
           environment.DBT_TARGET_ENV: environment.DEFAULT_DBT_TARGET}
    done = subprocess.run(
        [dbt_executable(), *command, "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
         "--target-path", str(target), "--log-format", "json", "--log-path", str(target / "logs"),
         "--vars", json.dumps(dbt_vars(str(warehouse)))],
        cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _event_names(events: list[dict]) -> set[str]:
    return {e.get("info", {}).get("name") for e in events}


def test_a_new_day_and_memory_share_reuse_the_saved_parse(tmp_path):
    target, warehouse = tmp_path / "target", tmp_path / "warehouse.duckdb"
    _dbt(["parse"], target, warehouse, ("2026-03-02", "2026-03-03"), "700MB")  # nothing saved yet: a full parse

    second = _dbt(["compile", "--select", "trace_members enriched_spans"], target, warehouse,
                  ("2026-03-05", "2026-03-06"), "900MB", busy_time=True)
    names = _event_names(second)
    assert "UnableToPartialParse" not in names, [e["info"]["msg"] for e in second if e["info"]["name"] == "UnableToPartialParse"]
    compiled = next(target.glob("compiled/**/trace_members.sql")).read_text()
    assert "cast('2026-03-05' as date)" in compiled and "cast('2026-03-06' as date)" in compiled
    assert "2026-03-02" not in compiled
    assert "waiting_nano" in next(target.glob("compiled/**/enriched_spans.sql")).read_text()  # busy time asked for

    # dbt's own check still works: another warehouse is another profile, parsed in full.
    third = _dbt(["parse"], target, tmp_path / "other.duckdb", ("2026-03-05", "2026-03-06"), "900MB")
    assert "UnableToPartialParse" in _event_names(third)


def test_keep_parse_replaces_the_projects_saved_parse(tmp_path):
    invocation, project = tmp_path / "invocation", tmp_path / "project"
    invocation.mkdir()
    project.mkdir()
    assert not keep_parse(invocation, project)  # the command saved nothing: nothing kept
    (invocation / "partial_parse.msgpack").write_bytes(b"new parse")
    (project / "partial_parse.msgpack").write_bytes(b"old parse")
    assert keep_parse(invocation, project)
    assert (project / "partial_parse.msgpack").read_bytes() == b"new parse"
    assert [p.name for p in project.iterdir()] == ["partial_parse.msgpack"]  # no temporary left behind


def test_keep_parse_where_it_cannot_write_keeps_nothing_and_does_not_fail(tmp_path):
    invocation = tmp_path / "invocation"
    invocation.mkdir()
    (invocation / "partial_parse.msgpack").write_bytes(b"parse")
    not_a_directory = tmp_path / "target"
    not_a_directory.write_text("")
    assert not keep_parse(invocation, not_a_directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["invocation", "target"]


def test_the_parse_is_kept_where_dagster_dbt_looks_for_it(monkeypatch, tmp_path):
    """Not relative to whatever directory the run happens to be in."""
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    assert saved_parse_dir() == DBT_PROJECT_DIR / "target"
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "elsewhere"))
    assert saved_parse_dir() == tmp_path / "elsewhere"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "invocation").mkdir()
    (tmp_path / "invocation" / "partial_parse.msgpack").write_bytes(b"parse")
    monkeypatch.chdir(tmp_path / "invocation")
    assert keep_parse(tmp_path / "invocation")
    assert (tmp_path / "elsewhere" / "partial_parse.msgpack").read_bytes() == b"parse"


def _command_dirs(project: Path, n: int) -> list[Path]:
    commands = []
    for i in range(n):
        command = project / f"span_models-run{i}"
        command.mkdir()
        (command / "manifest.json").write_text("{}")
        os.utime(command, (1_000_000 + i, 1_000_000 + i))  # long ago, run0 the oldest
        commands.append(command)
    return commands


def test_old_command_directories_beyond_the_newest_are_pruned(tmp_path):
    project = tmp_path / "target"
    project.mkdir()
    (project / "partial_parse.msgpack").write_bytes(b"parse")
    (project / "manifest.json").write_text("{}")
    (project / "notes").mkdir()  # not a dbt command's directory: no manifest
    commands = _command_dirs(project, 6)
    current = commands[0]  # the oldest by time, but the one just used: it counts and stays
    removed = prune_invocations(current, project, keep=3)
    assert sorted(p.name for p in removed) == ["span_models-run1", "span_models-run2", "span_models-run3"]
    assert sorted(p.name for p in project.iterdir()) == [
        "manifest.json", "notes", "partial_parse.msgpack", "span_models-run0", "span_models-run4", "span_models-run5"]
    assert prune_invocations(current, tmp_path / "missing") == []


def test_a_command_directory_touched_within_a_day_is_never_pruned(tmp_path):
    project = tmp_path / "target"
    project.mkdir()
    commands = _command_dirs(project, 4)
    os.utime(commands[1], None)  # now: another run's dbt may be writing into it
    removed = prune_invocations(commands[0], project, keep=1)
    assert sorted(p.name for p in removed) == ["span_models-run2", "span_models-run3"]
    assert sorted(p.name for p in project.iterdir()) == ["span_models-run0", "span_models-run1"]


def test_dbt_sends_no_usage_events(tmp_path):
    # No network at run time: dbt's anonymous usage tracking is off in dbt_project.yml
    # (with it on, every command sends events to dbt Labs, or waits for the send to fail).
    events = _dbt(["parse", "--log-level", "debug"], tmp_path / "target", tmp_path / "warehouse.duckdb",
                  ("2026-03-02", "2026-03-03"), "700MB")
    assert events, "dbt logged nothing"
    assert "SendingEvent" not in _event_names(events)
