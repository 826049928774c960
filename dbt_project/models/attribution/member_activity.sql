{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Root requests per member and day (adjusted count of the root SERVER spans of the
-- member's traces), allocated or not: how much of production traffic each member
-- drives. With the allocations' allocated_at it gives every experiment cell's share of
-- production load at any hour (attribution.treated_share).
select
    dt,
    member_id,
    sum(adjusted_count) as root_requests,
    count(*) as sampled_roots
from {{ ref('enriched_spans') }}
where {{ in_partition_window('dt') }}
  and member_id is not null
  and kind = 'SERVER'
  and is_root
group by dt, member_id
