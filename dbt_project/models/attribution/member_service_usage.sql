{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Adjusted request volume per allocated member, experiment cell, service and day.
-- source = 'server': the service's own SERVER spans (its units of work).
-- source = 'client': CLIENT spans calling the service (peer_service) from inside
--   attributed traces; this recovers the per-member volume of a callee whose own
--   spans lost the trace context (a blind spot).
-- Only spans after the member's allocation count: before it the member was not exposed.
with spans as (
    select *
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }}
      and member_id is not null
),
allocated as (
    select a.experiment_id, a.member_id, a.cell, a.allocated_at_unix_nano
    from {{ source('raw', 'allocations') }} as a
    inner join {{ source('raw', 'experiments') }} as e
        on e.experiment_id = a.experiment_id
),
units as (
    select dt, member_id, service, 'server' as source, adjusted_count, start_unix_nano
    from spans
    where kind = 'SERVER'
    union all
    select dt, member_id, peer_service as service, 'client' as source, adjusted_count, start_unix_nano
    from spans
    where kind = 'CLIENT' and peer_service is not null
)
select
    u.dt,
    a.experiment_id,
    a.cell,
    u.member_id,
    u.service,
    u.source,
    sum(u.adjusted_count) as requests,
    count(*) as sampled_spans
from units as u
inner join allocated as a
    on a.member_id = u.member_id
where u.start_unix_nano >= a.allocated_at_unix_nano
group by u.dt, a.experiment_id, a.cell, u.member_id, u.service, u.source
