{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- The latency histograms of members on the day they were allocated, per experiment cell:
-- only their spans from allocated_at on (see same_day_usage).
with same_day_spans as (
    {{ allocated_on_the_day(member_latency_spans()) }}
)
{{ exposed_same_day('same_day_spans', ['service', 'duration_bucket']) }}
