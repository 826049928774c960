{{ config(materialized='table') }}
-- The member of each trace. The root SERVER span carries enduser.id/user.id; every
-- other span of the trace inherits it through its trace, found by trace_key, a hash of
-- the trace id (macros/id_keys.sql: 10M spans, 3M traces: 0.23 against 0.35 s to group
-- and write them by the 32-character id, and the joins that read it no slower). A trace
-- with two different members (single_member false) is attributed to neither: min = max
-- tells it apart at half the cost of counting its distinct members (10M spans: 0.15 s
-- against 0.25-0.3 s). A working table of the partition window, like enriched_spans:
-- trace-grain history is not kept.
select
    dt,
    {{ id_key('trace_id') }} as trace_key,
    min(member_id) as member_id,
    min(member_id) = max(member_id) as single_member
from {{ ref('stg_spans') }}
where {{ in_partition_window('dt') }}
  and member_id is not null
group by dt, {{ id_key('trace_id') }}
