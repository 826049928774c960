"""One memory budget for a run: the Dagster process and the dbt process it starts.

DuckDB is the only part whose memory grows with the day (everything else is bounded by
design: streamed ingest, per-cell sums, chunked contracts), so the budget is kept by
giving each DuckDB what is left of it when it starts: the budget minus what the Dagster
process already holds (its imports and what earlier steps left behind) minus a reserve
for the rest of the step, never more than the configured cap
(COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT). With the defaults (2GB budget, 1GB cap) a 10M-span
day leaves DuckDB ~0.9-1 GB; a 30M-span day, whose earlier steps leave the process
larger, less. DuckDB spills to disk below its cap: a smaller share is slower, not wrong.
"""

from __future__ import annotations

import logging
import os
import re
import resource
from dataclasses import dataclass

from cost_attribution import environment

_log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)

# What a step holds beside its DuckDB, measured on the 10M- and 30M-span bench days
# (bench/README.md): the dbt process's Python, dbt and DuckDB's overshoot of its cap
# (0.27-0.30 GB on OTLP JSON days; 0.375 GB on the 30M-span Parquet day, whose 350 MB
# reserve put the process tree at 2.01 GB; 0.38 GB on the 30M-span JSON day once the
# span models had four more nodes, 20 MB short of a 400 MB reserve: 450 MB leaves room);
# an in-process step's result sets, frames and DuckDB's overshoot (latency_impact at 30M
# spans: 0.35-0.4 GB beyond its DuckDB share).
DBT_PROCESS_RESERVE = 450 * 10**6
IN_PROCESS_RESERVE = 400 * 10**6
# Spans one dbt build of the span models holds per MB of its DuckDB memory_limit: with 888 MB,
# 41M spans (four 10M days) built and 72M (seven) ran out of memory in enriched_spans; a
# 30M-span day builds. A window with more spans is built a few days at a time.
SPANS_PER_DBT_MB = 30_000
# Below this DuckDB spends its time spilling; a budget that leaves less is too small.
MIN_DUCKDB_SHARE = 256 * 10**6


def parse_size(text: str, name: str) -> int:
    """Bytes of a size written as DuckDB writes it ("2GB" = 2e9, "1.5GiB", "800MB")."""
    match = _SIZE.match(text or "")
    if not match:
        raise ValueError(f"{name}={text!r}: not a size. Fix: write it as DuckDB does, e.g. 2GB, 1500MB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm); elsewhere its peak so
    far, which can only overstate what it holds."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def mb(n_bytes: int) -> str:
    """A size DuckDB's memory_limit takes, in whole MB."""
    return f"{n_bytes // 10**6}MB"


@dataclass(frozen=True)
class MemoryBudget:
    budget: int  # bytes: the whole run (this process and the dbt process it starts)
    duckdb_cap: int  # bytes: no DuckDB gets more, whatever is left

    @classmethod
    def from_environment(cls) -> MemoryBudget:
        return cls(parse_size(environment.memory_budget(), environment.MEMORY_BUDGET_ENV),
                   parse_size(environment.memory_limit(), environment.MEMORY_LIMIT_ENV))

    def duckdb_share(self, reserve: int, held: int | None = None) -> int:
        """Bytes a DuckDB starting now may use: the budget less what this process holds
        (`held`, default its resident memory now) and `reserve`, capped at duckdb_cap,
        never below MIN_DUCKDB_SHARE (with a warning: the run may then exceed the budget)."""
        held = resident_bytes() if held is None else held
        share = min(self.duckdb_cap, self.budget - held - reserve)
        if share < MIN_DUCKDB_SHARE:
            _log.warning(
                "memory budget %s: this process holds %s and %s is reserved, leaving DuckDB %s; it gets %s and "
                "the run may exceed the budget. Fix: raise %s.", mb(self.budget), mb(held), mb(reserve),
                mb(max(share, 0)), mb(MIN_DUCKDB_SHARE), environment.MEMORY_BUDGET_ENV)
            return MIN_DUCKDB_SHARE
        return share
