{#
  A 64-bit hash of span or trace ids, for joins and groupings over every span of a day.
  The ids are random hex strings (32 + 16 characters): a hash table over 10M of them does
  not fit DuckDB's memory cap and spills (10M spans, 1GB cap: busy time 9-11 s by the ids,
  6.2 s by their hash; the orphan check 13.8 s against 8.8 s). Two different ids share a
  hash with probability ~n^2 / 2^65 (1e-6 for a day of 10M spans); the effect would be one
  span's waiting time or orphan flag taken from another span, a call counted as reaching
  its callee (trace_edges), or two traces taken for one (trace_members: 3M traces a day,
  ~2e-7: both get the member, or neither when their members differ). DuckDB's hash() and
  Spark's xxhash64() differ, but a key is only ever compared within one engine (the
  trace_members table is written and read by the same target).
#}
{% macro id_key() -%}
  {{ return(adapter.dispatch('id_key')(varargs)) }}
{%- endmacro %}

{% macro default__id_key(columns) -%}
  hash({{ columns | join(', ') }})
{%- endmacro %}

{% macro spark__id_key(columns) -%}
  xxhash64({{ columns | join(', ') }})
{%- endmacro %}
