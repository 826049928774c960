{{ config(materialized='table') }}
-- The SERVER and CLIENT spans of the partition window (the only kinds the method counts:
-- units of work and calls), narrowed to what the per-member models read: its trace's
-- member (null for a trace that never reached one: a blind spot), whether it is a root,
-- its adjusted count and its busy time. A working table of the window, not a history:
-- span-grain history stays in raw.spans, and rewriting every span's ids here (trace,
-- span and parent ids: random hex that does not compress) cost more than the rest of
-- the model (10M spans: 15.5 s written with them, 6.5 s without). INTERNAL, PRODUCER and
-- CONSUMER spans stay out for the same reason: nothing here reads them, and real traffic
-- is often half INTERNAL spans (service_coverage counts them from the staged spans).
--
-- busy_nano: for a SERVER span, the span's duration minus the time its own child
-- CLIENT calls were in flight (the union of their intervals, clipped to the span): the
-- time the service itself worked rather than waited. Work per request is measured as
-- the SERVER span's duration (the contract's definition, AnalysisSettings.work_measure
-- = "duration"); busy time is the alternative ("busy"). It is not the default because
-- a span whose calls run inside a fixed amount of work (as in the live sample world)
-- would look lighter whenever a treatment adds a call. For a CLIENT span: its duration.
-- Computed only when the work measure is busy time (macros/busy_time.sql); null otherwise.
--
-- A call is matched to its parent by one hash of the day, trace, parent span and service
-- (macros/id_keys.sql): one 64-bit key to join, sort the calls by and group them by
-- (10M spans: 1.35 s for the calls' union against 1.75 s by day, span hash and service).
-- Every CTE is read once and the spans are scanned where they are needed: DuckDB
-- materializes a CTE that is read twice (a 10M-span day: 6 GB of rows through its
-- buffer and a third of the model's time); Spark inlines either way.
{%- set busy_time = busy_time_wanted() %}
{% if busy_time %}
with servers as (
    select {{ id_key('dt', 'trace_id', 'span_id', 'service') }} as span_key, start_unix_nano, end_unix_nano
    from {{ ref('stg_spans') }}
    where {{ in_partition_window('dt') }} and kind = 'SERVER'
),
child_calls as (
    select
        s.span_key,
        greatest(c.start_unix_nano, s.start_unix_nano) as call_start,
        least(c.end_unix_nano, s.end_unix_nano) as call_end
    from {{ ref('stg_spans') }} as c
    inner join servers as s
        on s.span_key = {{ id_key('c.dt', 'c.trace_id', 'c.parent_span_id', 'c.service') }}
    where {{ in_partition_window('c.dt') }} and c.kind = 'CLIENT'
),
ordered_calls as (
    -- In start order, each call adds to the waiting time only the part of it that runs
    -- past every earlier call of the same span: the sum is the length of the union of
    -- the call intervals (overlapping calls, a fan-out, count once). One window, exact
    -- integer arithmetic.
    select
        span_key, call_start, call_end,
        max(call_end) over (
            partition by span_key order by call_start, call_end
            rows between unbounded preceding and 1 preceding
        ) as earlier_end
    from child_calls
    where call_end > call_start
),
waiting as (
    select
        span_key,
        sum(greatest(call_end - greatest(call_start, coalesce(earlier_end, call_start)), 0)) as waiting_nano
    from ordered_calls
    group by span_key
)
{% endif %}
select
    s.dt,
    case when tm.single_member then tm.member_id end as member_id,
    s.service,
    s.kind,
    s.parent_span_id is null as is_root,
    s.peer_service,
    s.start_unix_nano,
    s.duration_nano,
{%- if busy_time %}
    case
        when s.kind = 'SERVER' then greatest(s.duration_nano - coalesce(w.waiting_nano, 0), 0)
        else s.duration_nano
    end as busy_nano,
{%- else %}
    cast(null as bigint) as busy_nano,
{%- endif %}
    s.adjusted_count
from {{ ref('stg_spans') }} as s
left join {{ ref('trace_members') }} as tm
    on tm.dt = s.dt and tm.trace_key = {{ id_key('s.trace_id') }}
{%- if busy_time %}
left join waiting as w
    on s.kind = 'SERVER' and w.span_key = {{ id_key('s.dt', 's.trace_id', 's.span_id', 's.service') }}
{%- endif %}
where {{ in_partition_window('s.dt') }} and s.kind in ('SERVER', 'CLIENT')
