{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- SERVER-span latency per member, service and day (allocated or not) as a histogram on a
-- fixed log grid (macros/member_spans.sql), weighted by the adjusted count: what
-- member_service_latency joins with the allocations.
select dt, member_id, service, duration_bucket, sum(adjusted_count) as requests, count(*) as sampled_spans
from ({{ member_latency_spans() }}) as s
group by dt, member_id, service, duration_bucket
