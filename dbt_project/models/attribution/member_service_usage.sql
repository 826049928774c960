{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Adjusted request volume and work per allocated member, experiment cell, service and day.
-- source = 'server': the service's own SERVER spans (its units of work); work is their
--   duration in seconds and busy their busy time (enriched_spans.busy_nano: duration
--   minus the time its own calls were in flight), both weighted by adjusted count.
-- source = 'client': CLIENT spans calling the service (peer_service) from inside
--   attributed traces; this recovers the per-member volume of a callee whose own
--   spans lost the trace context (a blind spot); its work is not measured.
-- period = 'post': after the member's allocation (what the cell did to it);
-- period = 'pre': before it (the same member untreated: a CUPED covariate, never treated).
-- Spans are aggregated per member and day first and joined with the allocations
-- after (a member is in several experiments): only members allocated during the day
-- itself need the span-by-span comparison with allocated_at.
{% set units %}
    select dt, member_id, service, 'server' as source, adjusted_count, start_unix_nano,
           adjusted_count * duration_nano / 1e9 as work,
           adjusted_count * busy_nano / 1e9 as busy
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }} and member_id is not null and kind = 'SERVER'
    union all
    -- A caller's view of a call includes the network and the callee's own calls, so it
    -- does not measure the callee's work: work stays unknown for the client source.
    select dt, member_id, peer_service as service, 'client' as source, adjusted_count, start_unix_nano,
           cast(null as double) as work,
           cast(null as double) as busy
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }} and member_id is not null and kind = 'CLIENT' and peer_service is not null
{% endset %}
with member_day as (
    select dt, member_id, service, source, sum(adjusted_count) as requests, count(*) as sampled_spans,
           sum(work) as work, sum(busy) as busy
    from ({{ units }}) as u
    group by dt, member_id, service, source
),
same_day_units as (
    {{ allocated_on_the_day(units) }}
),
exposed as (
    {{ exposed_member_rows('member_day', 'same_day_units', ['service', 'source'],
                           measures={'requests': 'adjusted_count', 'sampled_spans': '1', 'work': 'work', 'busy': 'busy'},
                           pre_period=true) }}
)
select * from exposed
