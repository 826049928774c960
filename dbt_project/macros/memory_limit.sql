{# on-run-start: DuckDB's memory cap for this dbt run, COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT
   (the span_models asset sets it to what the run's memory budget leaves; default 1GB,
   cost_attribution.environment.DEFAULT_MEMORY_LIMIT). A hook rather than a profile
   setting: dbt re-parses the whole project when a profile value changes, and the share
   differs from run to run. Read only at execution, never at parse, for the same reason. #}
{% macro apply_memory_limit() %}
  {{ return(adapter.dispatch('apply_memory_limit')()) }}
{% endmacro %}

{% macro default__apply_memory_limit() %}
{% endmacro %}

{% macro duckdb__apply_memory_limit() %}
  {%- if execute -%}
    {%- set limit = env_var('COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT', '1GB') -%}
    {%- if not modules.re.fullmatch('(?i)[0-9]+(\.[0-9]+)? ?[KMGT]i?B', limit) -%}
      {{ exceptions.raise_compiler_error("COST_ATTRIBUTION_DUCKDB_MEMORY_LIMIT='" ~ limit ~ "' is not a size: set it like 1GB or 512MB") }}
    {%- endif -%}
    set memory_limit = '{{ limit }}'
  {%- endif -%}
{% endmacro %}
