{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- SERVER-span latency per allocated member, experiment cell, service and day, as a
-- histogram on a fixed log grid: bucket b holds durations in
-- [exp(b / 25), exp((b + 1) / 25)) nanoseconds (4.1% wide), weighted by the adjusted
-- count. Members are the resampling unit of the latency bootstrap, so the histogram
-- keeps them apart; per-span rows never leave the warehouse.
with spans as (
    select dt, member_id, service, duration_nano, adjusted_count, start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }}
      and kind = 'SERVER'
      and member_id is not null
      and duration_nano > 0
),
allocated as (
    select a.experiment_id, a.member_id, a.cell, a.allocated_at_unix_nano
    from {{ source('raw', 'allocations') }} as a
    inner join {{ source('raw', 'experiments') }} as e
        on e.experiment_id = a.experiment_id
),
bucketed as (
    select
        s.dt,
        a.experiment_id,
        a.cell,
        s.member_id,
        s.service,
        cast(floor(25.0 * ln(cast(s.duration_nano as double))) as integer) as duration_bucket,
        s.adjusted_count
    from spans as s
    inner join allocated as a
        on a.member_id = s.member_id
    where s.start_unix_nano >= a.allocated_at_unix_nano
)
select
    dt,
    experiment_id,
    cell,
    member_id,
    service,
    duration_bucket,
    sum(adjusted_count) as requests,
    count(*) as sampled_spans
from bucketed
group by dt, experiment_id, cell, member_id, service, duration_bucket
