{{ config(materialized='table') }}
-- The member of each trace. The root SERVER span carries enduser.id/user.id; every
-- other span of the trace inherits it through trace_id. A trace with two different
-- members is counted (conflicting_members) and attributed to neither. A working table
-- of the partition window, like enriched_spans: trace-grain history is not kept.
select
    dt,
    trace_id,
    min(member_id) as member_id,
    count(distinct member_id) as distinct_members
from {{ ref('stg_spans') }}
where {{ in_partition_window('dt') }}
  and member_id is not null
group by dt, trace_id
