{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Caller -> callee edges seen from CLIENT spans inside attributed traces, and how
-- many of those calls have no SERVER span of the callee in the same trace. A high
-- unmatched share while the callee shows anonymous roots is a broken edge: the
-- caller does not propagate trace context to that callee.
-- It needs trace ids, which only the staged spans keep (enriched_spans drops them), so
-- the calls take their member from trace_members. The spans are scanned twice rather
-- than through a shared CTE, which DuckDB would materialize (see enriched_spans), and
-- matched by one hash of the trace id and the callee (macros/id_keys.sql): the distinct
-- (day, trace, service) keys of a 30M-span day as (hash, service) pairs made DuckDB's
-- aggregate fail to allocate under dbt's memory cap in 2 of 3 tries (865 MB: "failed to
-- allocate 128 MiB"); as one 64-bit key it succeeded in every try from 600 MB to 1.5 GB.
with calls as (
    select s.dt, {{ id_key('s.trace_id', 's.peer_service') }} as callee_key, s.service as caller, s.peer_service as callee,
           s.adjusted_count
    from {{ ref('stg_spans') }} as s
    inner join {{ ref('trace_members') }} as tm
        on tm.dt = s.dt and tm.trace_key = {{ id_key('s.trace_id') }} and tm.single_member
    where {{ in_partition_window('s.dt') }} and s.kind = 'CLIENT' and s.peer_service is not null
),
callee_servers as (
    select distinct dt, {{ id_key('trace_id', 'service') }} as callee_key
    from {{ ref('stg_spans') }}
    where {{ in_partition_window('dt') }} and kind = 'SERVER'
)
select
    c.dt,
    c.caller,
    c.callee,
    count(*) as client_spans,
    sum(c.adjusted_count) as client_requests,
    sum(case when cs.callee_key is null then 1 else 0 end) as unmatched_client_spans
from calls as c
left join callee_servers as cs
    on cs.dt = c.dt and cs.callee_key = c.callee_key
group by c.dt, c.caller, c.callee
