"""The sums that pair each member's services with each other, from one vector per member.

Two families of an experiment's sums relate a member's value at one service to its values
elsewhere: the cross products between services (the dollar interval's correlation) and
the root-requests covariate (x = the member's root requests to *other* services, for
every service). Joined row to row in SQL they were the two costliest queries of
usage_deltas (a self join of the member rows on the member, and a dense member x service
grid). Here DuckDB pivots each member's rows into one row (`MemberVectors.sql`: its cell,
root requests, and per service requests, work and own root requests) and numpy sums the
products of those rows batch by batch: memory is a batch (`rows_per_batch`), not the
members, and the sums are the same as the joins' (tests: attribution/test_per_experiment.py).

Values follow usage_moments' rule: a null, NaN, infinite or negative value is left out of
every sum (its product with anything too); a pair, service or cell with no value left is
null where SQL's sum would be null.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

# Members per batch: their dense rows (requests, work, own roots per service) are what numpy holds.
BATCH_VALUES = 2_000_000
# An outcome value that is there but not valid (so its row counts, its value does not).
INVALID = -1.0


def valid_value(column: str) -> str:
    """SQL: the column holds a value the statistics count (not null, finite, not negative)."""
    return f"({column} IS NOT NULL AND isfinite({column}) AND {column} >= 0)"


def rows_per_batch(services: int) -> int:
    """Members per batch, so a batch's dense rows hold about BATCH_VALUES numbers (~16 MB)."""
    return max(1, BATCH_VALUES // (1 + 3 * max(services, 1)))


@dataclass(frozen=True)
class MemberVectors:
    """How one member's row is laid out, for `services` (in order) and `cells` (in order)."""

    services: list[str]
    cells: list[str]

    def sql(self, usage: str, roots: str, service_index: str) -> str:
        """One row per member of the (quoted) staged tables `usage` (member_id, cell,
        service, requests, work: one row per member and service) and `roots` (member_id,
        cell, service, root_requests), each service by its position in `service_index`
        (service, s): the cell's position in `cells` (params()), the member's root
        requests (NaN: none), its usage rows [{s, r, w}] (r, w INVALID when not valid) and
        its own root requests per service [{s, o}]. The SQL holds no name: cells are
        parameters, services are positions."""
        cell_cases = " ".join(f"WHEN ? THEN {i}" for i in range(len(self.cells)))
        return f"""
            SELECT any_value(CASE cell {cell_cases} END) AS cell_index,
                   coalesce(sum(root), CAST('NaN' AS DOUBLE)) AS roots,
                   list({{'s': s, 'r': r, 'w': w}}) FILTER (WHERE NOT is_root) AS usage,
                   list({{'s': s, 'o': root}}) FILTER (WHERE is_root AND s IS NOT NULL AND root IS NOT NULL) AS own
            FROM (
                SELECT member_id, cell, service, false AS is_root,
                       CASE WHEN {valid_value('requests')} THEN requests ELSE {INVALID} END AS r,
                       CASE WHEN {valid_value('work')} THEN work ELSE {INVALID} END AS w, CAST(NULL AS DOUBLE) AS root
                FROM {usage} WHERE service IS NOT NULL
                UNION ALL
                SELECT member_id, cell, service, true, NULL, NULL, CAST(root_requests AS DOUBLE) FROM {roots}
            ) u
            LEFT JOIN {service_index} USING (service)
            GROUP BY member_id
        """

    def params(self) -> list:
        return list(self.cells)


def _dense(column: pa.ListArray, members: int, services: int, fields: tuple[str, ...], fill: float) -> list[np.ndarray]:
    """members x services arrays of `fields` of a column of per-member lists of {s, ...}."""
    values, parent = column.flatten(), column.value_parent_indices().to_numpy()
    position = values.field("s").to_numpy(zero_copy_only=False)
    dense = []
    for name in fields:
        matrix = np.full((members, services), fill)
        matrix[parent, position] = values.field(name).to_numpy(zero_copy_only=False)
        dense.append(matrix)
    return dense


@dataclass
class CellSums:
    """One cell's sums over its members (k services; 2k columns: requests then work)."""

    k: int
    both: np.ndarray = field(init=False)  # k x k: members with a row at both services
    products: np.ndarray = field(init=False)  # 2k x 2k: sum of products of valid values
    valid_pairs: np.ndarray = field(init=False)  # 2k x 2k: members with both values valid
    totals: np.ndarray = field(init=False)  # 2k: sum of valid values
    valid: np.ndarray = field(init=False)  # 2k: members with a valid value
    # the root covariate (one column per service): sums of x, x^2, and per metric y, y^2, xy
    root: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self):
        k = self.k
        self.both = np.zeros((k, k))
        self.products, self.valid_pairs = np.zeros((2 * k, 2 * k)), np.zeros((2 * k, 2 * k))
        self.totals, self.valid = np.zeros(2 * k), np.zeros(2 * k)
        self.root = {name: np.zeros(k) for name in (
            "sum_x", "sum_x2", "rows", "requests_sum_y", "requests_sum_y2", "requests_sum_xy", "requests_rows",
            "work_sum_y", "work_sum_y2", "work_sum_xy", "work_rows")}

    def add(self, values: np.ndarray, own_roots: np.ndarray, roots: np.ndarray) -> None:
        """values: members x 2k (requests then work; NaN: no row, INVALID: not valid);
        own_roots: members x k (0: none); roots: members (NaN: no root rows)."""
        k = self.k
        present = ~np.isnan(values[:, :k])
        ok = np.isfinite(values) & (values >= 0)
        clean = np.where(ok, values, 0.0)
        okf = ok.astype(np.float64)
        presentf = present.astype(np.float64)
        self.both += presentf.T @ presentf
        self.products += clean.T @ clean
        self.valid_pairs += okf.T @ okf
        self.totals += clean.sum(axis=0)
        self.valid += okf.sum(axis=0)
        # x = the member's roots less its own at the service, member by member (so the root
        # service's x is exactly 0 when all its roots go there); a row of the covariate
        # exists for every member with valid x, of the outcome where a metric is valid.
        with np.errstate(invalid="ignore"):
            x = roots[:, None] - own_roots
        x_ok = np.isfinite(x) & (x >= 0)
        x = np.where(x_ok, x, 0.0)
        self.root["sum_x"] += x.sum(axis=0)
        self.root["sum_x2"] += (x * x).sum(axis=0)
        self.root["rows"] += (x_ok | ok[:, :k] | ok[:, k:]).sum(axis=0)
        for m, y, y_ok in (("requests", clean[:, :k], ok[:, :k]), ("work", clean[:, k:], ok[:, k:])):
            self.root[f"{m}_sum_y"] += y.sum(axis=0)
            self.root[f"{m}_sum_y2"] += (y * y).sum(axis=0)
            self.root[f"{m}_sum_xy"] += (x * y).sum(axis=0)
            self.root[f"{m}_rows"] += (x_ok | y_ok).sum(axis=0)


def sum_members(batches: Iterable[pa.RecordBatch], layout: MemberVectors) -> list[CellSums]:
    """Every cell's sums (layout.cells' order) over the member rows of `layout.sql`."""
    k = len(layout.services)
    sums = [CellSums(k) for _ in layout.cells]
    for batch in batches:
        members = batch.num_rows
        if members == 0:
            continue
        cell_index = batch.column("cell_index").to_numpy(zero_copy_only=False)
        roots = batch.column("roots").to_numpy(zero_copy_only=False)
        requests, work = _dense(batch.column("usage"), members, k, ("r", "w"), np.nan)
        [own] = _dense(batch.column("own"), members, k, ("o",), 0.0)
        values = np.hstack([requests, work])
        for c, cell in enumerate(sums):
            mine = cell_index == c
            if mine.any():
                cell.add(values[mine], own[mine], roots[mine])
    return sums


def _null_where(values: np.ndarray, counts: np.ndarray) -> list:
    return [None if n == 0 else float(v) for v, n in zip(values, counts)]


def cross_moment_rows(sums: list[CellSums], layout: MemberVectors, members: dict[str, int]) -> list[dict]:
    """usage_moments.CROSS_MOMENT_SCHEMA rows (without experiment_id): per cell with members
    and pair of services a <= b that some member has rows at both; one row with null services
    for a cell whose members have no pair."""
    k, rows = len(layout.services), []
    for cell, cell_sums in zip(layout.cells, sums):
        if not members.get(cell):
            continue
        a_index, b_index = np.nonzero(np.triu(cell_sums.both > 0))
        if a_index.size == 0:
            rows.append({"cell": cell, "members": members[cell]})
            continue
        p, n = cell_sums.products, cell_sums.valid_pairs
        blocks = {"requests_requests": (0, 0), "requests_work": (0, k), "work_requests": (k, 0), "work_work": (k, k)}
        values = {name: _null_where(p[a_index + i, b_index + j], n[a_index + i, b_index + j])
                  for name, (i, j) in blocks.items()}
        requests_a = _null_where(cell_sums.totals[a_index], cell_sums.valid[a_index])
        work_a = _null_where(cell_sums.totals[a_index + k], cell_sums.valid[a_index + k])
        for row, (a, b) in enumerate(zip(a_index, b_index)):
            rows.append({"cell": cell, "members": members[cell], "service_a": layout.services[a],
                         "service_b": layout.services[b], "requests_a": requests_a[row], "work_a": work_a[row]}
                        | {name: column[row] for name, column in values.items()})
    return rows


def root_ratio_frame(sums: list[CellSums], layout: MemberVectors, schema: dict) -> pl.DataFrame:
    """usage_moments' root-covariate sums of both metrics (its _ROOT_RATIO_SCHEMA, without
    experiment_id): a (cell, service) with any row of the covariate or the outcome."""
    frames = []
    for cell, cell_sums in zip(layout.cells, sums):
        root = cell_sums.root
        there = root["rows"] > 0
        frame = {"cell": [cell] * int(there.sum()), "service": [s for s, t in zip(layout.services, there) if t]}
        frame |= {name: (values[there] > 0 if name.endswith("rows") else values[there])
                  for name, values in root.items() if name != "rows"}
        frames.append(pl.DataFrame(frame, schema={name: schema[name] for name in frame}))
    if not frames:
        return pl.DataFrame(schema={name: dtype for name, dtype in schema.items() if name != "experiment_id"})
    return pl.concat(frames)
