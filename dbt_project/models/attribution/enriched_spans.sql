{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Every span with its trace's member (null for a trace that never reached one:
-- a blind spot) and its adjusted count.
select
    s.dt,
    s.trace_id,
    s.span_id,
    s.parent_span_id,
    s.service,
    s.kind,
    s.peer_service,
    s.start_unix_nano,
    s.duration_nano,
    s.sampling_probability,
    s.adjusted_count,
    case when tm.distinct_members = 1 then tm.member_id end as member_id
from {{ ref('stg_spans') }} as s
left join {{ ref('trace_members') }} as tm
    on tm.dt = s.dt and tm.trace_id = s.trace_id
where {{ in_partition_window('s.dt') }}
