{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- SERVER-span latency per allocated member, experiment cell, service and day, as a
-- histogram on a fixed log grid: bucket b holds durations in
-- [exp(b / 25), exp((b + 1) / 25)) nanoseconds (4.1% wide), weighted by the adjusted
-- count. Members are the resampling unit of the latency bootstrap, so the histogram
-- keeps them apart; per-span rows never leave the warehouse. Spans are bucketed per
-- member first and joined with the allocations after (see member_service_usage).
with spans as (
    select
        dt,
        member_id,
        service,
        cast(floor(25.0 * ln(cast(duration_nano as double))) as integer) as duration_bucket,
        adjusted_count,
        start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }}
      and kind = 'SERVER'
      and member_id is not null
      and duration_nano > 0
),
member_buckets as (
    select dt, member_id, service, duration_bucket, sum(adjusted_count) as requests, count(*) as sampled_spans
    from spans
    group by dt, member_id, service, duration_bucket
),
exposed_all_day as (
    select m.dt, a.experiment_id, a.cell, m.member_id, m.service, m.duration_bucket, m.requests, m.sampled_spans
    from member_buckets as m
    inner join {{ ref('member_exposure') }} as a
        on a.member_id = m.member_id and a.allocated_date < m.dt
),
exposed_during_day as (
    select s.dt, a.experiment_id, a.cell, s.member_id, s.service, s.duration_bucket,
           sum(s.adjusted_count) as requests, count(*) as sampled_spans
    from spans as s
    inner join {{ ref('member_exposure') }} as a
        on a.member_id = s.member_id and a.allocated_date = s.dt
    where s.start_unix_nano >= a.allocated_at_unix_nano
    group by s.dt, a.experiment_id, a.cell, s.member_id, s.service, s.duration_bucket
)
select * from exposed_all_day
union all
select * from exposed_during_day
