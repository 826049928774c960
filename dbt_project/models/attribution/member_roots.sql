{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Root requests (adjusted root SERVER spans: the requests a member itself sends) per
-- allocated member, experiment cell, root service, day and period ('pre' before the
-- member's allocation, 'post' after). A member's root requests measure how active it
-- is; the statistics use them as a covariate (regression adjustment) when the cell
-- leaves them unchanged, which removes most of the between-member noise.
{% set roots %}
    select dt, member_id, service, adjusted_count, start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }}
      and member_id is not null
      and kind = 'SERVER'
      and is_root
{% endset %}
with member_day as (
    select dt, member_id, service, sum(adjusted_count) as root_requests
    from ({{ roots }}) as s
    group by dt, member_id, service
),
same_day_roots as (
    {{ allocated_on_the_day(roots) }}
),
exposed as (
    {{ exposed_member_rows('member_day', 'same_day_roots', ['service'],
                           measures={'root_requests': 'adjusted_count'}, pre_period=true) }}
)
select * from exposed
