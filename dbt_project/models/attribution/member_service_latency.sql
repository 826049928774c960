{{ config(materialized='view' if member_rows_as_view() else 'incremental',
          incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- SERVER-span latency per allocated member, experiment cell, service and day, as a
-- histogram on a fixed log grid: bucket b holds durations in
-- [exp(b / 25), exp((b + 1) / 25)) nanoseconds (4.1% wide), weighted by the adjusted
-- count. Members are the resampling unit of the latency bootstrap, so the histogram
-- keeps them apart; per-span rows never leave the warehouse. Only spans after the
-- member's allocation: whole days from member_day_latency, the allocation day from
-- same_day_latency. A view on DuckDB, like member_service_usage.
{{ joined_member_rows(ref('member_day_latency'), ref('same_day_latency'), ['service', 'duration_bucket'],
                      ['requests', 'sampled_spans']) }}
