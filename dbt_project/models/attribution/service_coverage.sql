{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Trace completeness per service and day: how much of a service's (adjusted) work
-- reaches a member, how much starts anonymous traces, how many spans point at a
-- parent that never arrived.
-- enriched_spans is scanned where needed rather than through a shared CTE, which
-- DuckDB would materialize (see enriched_spans).
with known_spans as (
    select distinct dt, trace_id, span_id from {{ ref('enriched_spans') }} where {{ in_partition_window('dt') }}
),
server as (
    select
        s.dt,
        s.service,
        count(*) as server_spans,
        sum(s.adjusted_count) as adjusted_requests,
        sum(case when s.member_id is not null then s.adjusted_count else 0 end) as attributed_requests,
        sum(case when s.parent_span_id is null then s.adjusted_count else 0 end) as root_requests,
        sum(case when s.parent_span_id is null and s.member_id is null then s.adjusted_count else 0 end)
            as anonymous_root_requests
    from {{ ref('enriched_spans') }} as s
    where {{ in_partition_window('s.dt') }} and s.kind = 'SERVER'
    group by s.dt, s.service
),
orphans as (
    select
        s.dt,
        s.service,
        sum(case when s.parent_span_id is not null then 1 else 0 end) as spans_with_parent,
        sum(case when s.parent_span_id is not null and k.span_id is null then 1 else 0 end) as orphan_spans
    from {{ ref('enriched_spans') }} as s
    left join known_spans as k
        on k.dt = s.dt and k.trace_id = s.trace_id and k.span_id = s.parent_span_id
    where {{ in_partition_window('s.dt') }}
    group by s.dt, s.service
)
select
    server.dt,
    server.service,
    server.server_spans,
    server.adjusted_requests,
    server.attributed_requests,
    server.root_requests,
    server.anonymous_root_requests,
    coalesce(orphans.spans_with_parent, 0) as spans_with_parent,
    coalesce(orphans.orphan_spans, 0) as orphan_spans
from server
left join orphans
    on orphans.dt = server.dt and orphans.service = server.service
