{{ config(incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Adjusted request volume per experiment x cell x service x day: the table a person
-- reads to see where traffic moved, and the one the Spark target must reproduce.
select
    dt,
    experiment_id,
    cell,
    service,
    source,
    count(*) as active_members,
    sum(requests) as requests,
    cast(sum(sampled_spans) as bigint) as sampled_spans
from {{ ref('member_service_usage') }}
where {{ in_partition_window('dt') }}
  and period = 'post'
group by dt, experiment_id, cell, service, source
