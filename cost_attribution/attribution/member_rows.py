"""The history of a warehouse built when member_service_usage and member_service_latency
were tables, moved into the per-member tables their views read now.

Those tables held a member's day once per experiment it was in (and its allocation day
split at allocated_at). The models now write a member's day once (member_day_usage,
member_day_latency) and its allocation days apart (same_day_usage, same_day_latency);
member_service_usage and member_service_latency are views that join them with the
allocations (dbt_project/macros/member_exposure.sql). dbt only builds the partition
window, so without this the days before it would vanish with the old tables when dbt
replaces them by the views. Each member day is recovered from one experiment's rows of
it: the whole day where the member was allocated on another day, or both periods of its
allocation day (usage keeps the spans before allocated_at as period 'pre'; latency does
not, so only whole days count there). The allocation-day rows are copied as they are.
Members no experiment had allocated have no rows there, so none here: only the
allocated members' days the old tables held are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from cost_attribution.warehouse import quote_ident, qualified, relation_columns, relation_type, table_exists, transaction


@dataclass(frozen=True)
class MemberRows:
    joined: str  # the view now, a table in an old warehouse
    member_days: str
    same_days: str
    keys: tuple[str, ...]  # besides dt, member_id
    measures: tuple[str, ...]
    whole_allocation_day: bool  # the allocation day's rows add up to the member's whole day

    def move_history(self, conn: duckdb.DuckDBPyConnection) -> int:
        """Split the old table into the per-member tables; returns the member days kept
        (0 when there is nothing to move: a new warehouse, or one moved already)."""
        if relation_type(conn, self.joined) != "BASE TABLE" or table_exists(conn, self.member_days):
            return 0
        keys = ", ".join(f"r.{k}" for k in self.keys)
        sums = ", ".join(
            f"CAST(sum(r.{m}) AS BIGINT) AS {m}" if m == "sampled_spans" else f"sum(r.{m}) AS {m}"
            for m in self.measures
        )
        whole = "true" if self.whole_allocation_day else "NOT same_day"
        with transaction(conn):
            conn.execute(
                f"""
                CREATE TEMP TABLE _old_member_rows AS
                SELECT u.*, a.allocated_date = u.dt AS same_day
                FROM {qualified(self.joined)} u
                JOIN raw.allocations a ON a.experiment_id = u.experiment_id AND a.member_id = u.member_id
                """
            )
            columns = ", ".join(quote_ident(c) for c in relation_columns(conn, self.joined))
            conn.execute(
                f"CREATE TABLE {qualified(self.same_days)} AS SELECT {columns} FROM _old_member_rows WHERE same_day"
            )
            conn.execute(
                f"""
                CREATE TABLE {qualified(self.member_days)} AS
                WITH picked AS (
                    SELECT dt, member_id, experiment_id
                    FROM (SELECT DISTINCT dt, member_id, experiment_id, same_day FROM _old_member_rows WHERE {whole})
                    QUALIFY row_number() OVER (PARTITION BY dt, member_id ORDER BY same_day, experiment_id) = 1
                )
                SELECT r.dt, r.member_id, {keys}, {sums}
                FROM _old_member_rows r JOIN picked p USING (dt, member_id, experiment_id)
                GROUP BY ALL
                """
            )
            [(days,)] = conn.execute(
                f"SELECT count(*) FROM (SELECT DISTINCT dt, member_id FROM {qualified(self.member_days)})"
            ).fetchall()
            conn.execute("DROP TABLE _old_member_rows")
        return int(days)


MEMBER_ROWS = (
    MemberRows("main.member_service_usage", "main.member_day_usage", "main.same_day_usage",
               keys=("service", "source"), measures=("requests", "sampled_spans", "work", "busy"),
               whole_allocation_day=True),
    MemberRows("main.member_service_latency", "main.member_day_latency", "main.same_day_latency",
               keys=("service", "duration_bucket"), measures=("requests", "sampled_spans"),
               whole_allocation_day=False),
)


def move_member_history(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Every old per-member x experiment table's history moved (member days per table)."""
    return {rows.joined: moved for rows in MEMBER_ROWS if (moved := rows.move_history(conn))}

