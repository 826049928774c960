{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Adjusted request volume per allocated member, experiment cell, service and day.
-- source = 'server': the service's own SERVER spans (its units of work).
-- source = 'client': CLIENT spans calling the service (peer_service) from inside
--   attributed traces; this recovers the per-member volume of a callee whose own
--   spans lost the trace context (a blind spot).
-- Only spans after the member's allocation count: before it the member was not exposed.
-- Spans are aggregated per member and day first and joined with the allocations
-- after (a member is in several experiments): only members allocated during the day
-- itself need the span-by-span comparison with allocated_at.
with units as (
    select dt, member_id, service, 'server' as source, adjusted_count, start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }} and member_id is not null and kind = 'SERVER'
    union all
    select dt, member_id, peer_service as service, 'client' as source, adjusted_count, start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }} and member_id is not null and kind = 'CLIENT' and peer_service is not null
),
member_day as (
    select dt, member_id, service, source, sum(adjusted_count) as requests, count(*) as sampled_spans
    from units
    group by dt, member_id, service, source
),
exposed as (
    {{ exposed_member_rows('member_day', 'units', ['service', 'source']) }}
)
select * from exposed
