-- Spans with the adjusted count (1/p) each sampled span stands for.
select
    dt,
    trace_id,
    span_id,
    parent_span_id,
    service,
    kind,
    name,
    start_unix_nano,
    end_unix_nano,
    end_unix_nano - start_unix_nano as duration_nano,
    peer_service,
    member_id,
    sampling_probability,
    1.0 / sampling_probability as adjusted_count
from {{ source('raw', 'spans') }}
