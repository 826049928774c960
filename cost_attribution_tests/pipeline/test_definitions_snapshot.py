"""The code location as a reviewed file (as dagster-open-platform's test_defs.py does):
every asset's key, deps, partitions, group, owners and kinds; every check with its
asset and whether it blocks; the job's selection, the schedules' crons and the sensors.
A renamed dep, a lost partitions definition or a check that quietly stops blocking
shows up as a diff of __snapshots__/definitions.json. A misspelled string dep would
load silently as an external asset; here it is listed as one.

After a deliberate change to the graph, regenerate the file and review its diff:

    UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest -q cost_attribution_tests/pipeline/test_definitions_snapshot.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from cost_attribution.definitions import build_defs

SNAPSHOT = Path(__file__).parent / "__snapshots__" / "definitions.json"
START_DATE = "2026-01-01"


def _partitions(partitions_def) -> str | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return f"{type(partitions_def).__name__}(start={partitions_def.start.date().isoformat()}, " \
               f"cron={partitions_def.cron_schedule!r}, timezone={partitions_def.timezone})"
    return type(partitions_def).__name__


def definitions_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "executable": node.is_executable,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "group": node.group_name,
            "owners": sorted(node.owners),
            "kinds": sorted(node.kinds),
            "pools": sorted(node.pools or []),
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        spec = graph.get_check_spec(check_key)
        checks[f"{check_key.asset_key.to_user_string()}:{check_key.name}"] = {"blocking": spec.blocking}
    jobs = {}
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__ASSET_JOB"):
            continue
        job_graph = job.asset_layer.asset_graph
        jobs[job.name] = {
            "assets": sorted(k.to_user_string() for k in job_graph.get_all_asset_keys() if job_graph.get(k).is_executable),
            "checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in job_graph.asset_check_keys),
            "partitions": _partitions(job.partitions_def),
        }
    return {
        "assets": assets,
        "asset_checks": checks,
        "jobs": jobs,
        "schedules": {s.name: {"cron": s.cron_schedule, "job": s.job_name, "timezone": s.execution_timezone}
                      for s in (defs.resolve_schedule_def(u.name) for u in defs.schedules or [])},
        "sensors": sorted(s.name for s in defs.sensors or []),
        "resources": sorted((defs.resources or {}).keys()),
    }


def test_definitions_match_the_reviewed_snapshot():
    current = definitions_snapshot(build_defs(start_date=START_DATE))
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), f"{SNAPSHOT}: missing; create it with UPDATE_SNAPSHOT=1 (see this module's docstring)"
    recorded = json.loads(SNAPSHOT.read_text())
    for section in ("assets", "asset_checks", "jobs", "schedules"):
        added = sorted(set(current[section]) - set(recorded[section]))
        removed = sorted(set(recorded[section]) - set(current[section]))
        changed = sorted(k for k in set(current[section]) & set(recorded[section]) if current[section][k] != recorded[section][k])
        assert not (added or removed or changed), (
            f"{section} differ from {SNAPSHOT.name}: added {added}, removed {removed}, changed {changed}. "
            "If the change is intended, regenerate with UPDATE_SNAPSHOT=1 and review the diff.")
    assert current == recorded


def test_the_snapshot_holds_what_a_reviewer_needs():
    recorded = json.loads(SNAPSHOT.read_text())
    assert recorded["asset_checks"]["trace_completeness:trace_volume"]["blocking"] is True
    assert "trace_completeness" in recorded["assets"]["usage_deltas"]["deps"]
    assert recorded["assets"]["cost_report"]["partitions"].startswith(f"DailyPartitionsDefinition(start={START_DATE}")
    # Every dep is an asset the location defines: no misspelled string dep loaded as an external asset.
    external = sorted(k for k, a in recorded["assets"].items() if not a["executable"])
    assert external == []
