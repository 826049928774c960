{#
  The spans the per-member models aggregate, as SQL text: each is read twice by its
  models (the whole day per member, and the spans of members allocated that very day one
  by one), and a CTE read twice is materialized by DuckDB (see allocated_on_the_day).
#}

{# member_day_usage / same_day_usage:
   source = 'server': the service's own SERVER spans (its units of work); work is their
     duration in seconds and busy their busy time (enriched_spans.busy_nano: duration
     minus the time its own calls were in flight), both weighted by adjusted count.
   source = 'client': CLIENT spans calling the service (peer_service) from inside
     attributed traces; this recovers the per-member volume of a callee whose own spans
     lost the trace context (a blind spot). A caller's view of a call includes the
     network and the callee's own calls, so it does not measure the callee's work: work
     stays unknown for the client source. #}
{% macro member_usage_units(source=none) -%}
    {%- if source in (none, 'server') %}
    select dt, member_id, service, 'server' as source, adjusted_count, start_unix_nano,
           adjusted_count * duration_nano / 1e9 as work,
           adjusted_count * busy_nano / 1e9 as busy
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }} and member_id is not null and kind = 'SERVER'
    {%- endif %}
    {%- if source is none %}
    union all
    {%- endif %}
    {%- if source in (none, 'client') %}
    select dt, member_id, peer_service as service, 'client' as source, adjusted_count, start_unix_nano,
           cast(null as double) as work,
           cast(null as double) as busy
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }} and member_id is not null and kind = 'CLIENT' and peer_service is not null
    {%- endif %}
{%- endmacro %}

{# The sources member_usage_units(source) gives one at a time. #}
{% macro member_usage_sources() -%}
    {{ return(['server', 'client']) }}
{%- endmacro %}

{% macro member_usage_measures() -%}
    {{ return({'requests': 'adjusted_count', 'sampled_spans': '1', 'work': 'work', 'busy': 'busy'}) }}
{%- endmacro %}


{# member_day_latency / same_day_latency: SERVER spans on a fixed log grid of durations,
   bucket b = [exp(b / 25), exp((b + 1) / 25)) nanoseconds (4.1% wide). #}
{% macro member_latency_spans() -%}
    select
        dt,
        member_id,
        service,
        cast(floor(25.0 * ln(cast(duration_nano as double))) as integer) as duration_bucket,
        adjusted_count,
        start_unix_nano
    from {{ ref('enriched_spans') }}
    where {{ in_partition_window('dt') }}
      and kind = 'SERVER'
      and member_id is not null
      and duration_nano > 0
{%- endmacro %}
