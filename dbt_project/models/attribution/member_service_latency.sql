{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- SERVER-span latency per allocated member, experiment cell, service and day, as a
-- histogram on a fixed log grid: bucket b holds durations in
-- [exp(b / 25), exp((b + 1) / 25)) nanoseconds (4.1% wide), weighted by the adjusted
-- count. Members are the resampling unit of the latency bootstrap, so the histogram
-- keeps them apart; per-span rows never leave the warehouse. Spans are bucketed per
-- member first and joined with the allocations after (see member_service_usage).
{% set spans %}
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
{% endset %}
with member_buckets as (
    select dt, member_id, service, duration_bucket, sum(adjusted_count) as requests, count(*) as sampled_spans
    from ({{ spans }}) as s
    group by dt, member_id, service, duration_bucket
),
same_day_spans as (
    {{ allocated_on_the_day(spans) }}
),
exposed as (
    {{ exposed_member_rows('member_buckets', 'same_day_spans', ['service', 'duration_bucket']) }}
)
select * from exposed
