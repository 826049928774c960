{{ config(materialized='view') }}
-- Allocated members of known experiments, with when they were exposed. Views: the
-- span models join it after aggregating spans per member, never span by span.
select
    a.experiment_id,
    a.member_id,
    a.cell,
    a.allocated_at_unix_nano,
    a.allocated_date
from {{ source('raw', 'allocations') }} as a
inner join {{ source('raw', 'experiments') }} as e
    on e.experiment_id = a.experiment_id
