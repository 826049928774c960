{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Caller -> callee calls per experiment cell and day: CLIENT spans (peer_service is
-- the callee) inside attributed traces, joined with the member's allocation. The
-- shift-left check compares cells: an edge that a treatment uses and its control
-- never does is a new runtime dependency the treatment would ship.
-- Only calls after the member's allocation count (mirrors member_service_usage).
with calls as (
    select dt, member_id, service as caller, peer_service as callee, adjusted_count, start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }}
      and kind = 'CLIENT'
      and peer_service is not null
      and member_id is not null
),
allocated as (
    select a.experiment_id, a.member_id, a.cell, a.allocated_at_unix_nano
    from {{ source('raw', 'allocations') }} as a
    inner join {{ source('raw', 'experiments') }} as e
        on e.experiment_id = a.experiment_id
)
select
    c.dt,
    a.experiment_id,
    a.cell,
    c.caller,
    c.callee,
    count(distinct c.member_id) as active_members,
    sum(c.adjusted_count) as requests,
    count(*) as sampled_spans
from calls as c
inner join allocated as a
    on a.member_id = c.member_id
where c.start_unix_nano >= a.allocated_at_unix_nano
group by c.dt, a.experiment_id, a.cell, c.caller, c.callee
