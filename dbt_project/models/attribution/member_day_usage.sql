{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Adjusted request volume and work per member, service, source and day (the member's
-- whole day, allocated or not): what member_service_usage joins with the allocations.
-- The spans and their sources: macros/member_spans.sql.
select dt, member_id, service, source,
       sum(adjusted_count) as requests, count(*) as sampled_spans, sum(work) as work, sum(busy) as busy
from ({{ member_usage_units() }}) as u
group by dt, member_id, service, source
