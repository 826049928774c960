{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- The days members were allocated on, per experiment cell, service, source and period:
-- their spans compared one by one with allocated_at ('post' from it on, 'pre' before).
-- Only these member days need the spans; member_service_usage takes every other day
-- from member_day_usage.
with same_day_units as (
    {{ allocated_on_the_day(member_usage_units()) }}
)
{{ exposed_same_day('same_day_units', ['service', 'source'], measures=member_usage_measures(), pre_period=true) }}
