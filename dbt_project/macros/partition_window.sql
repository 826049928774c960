{# The partition window Dagster is materializing, [min_date, max_date): a --vars value
   when dbt is run by hand (`dbt build --vars '{"min_date": "2026-03-02", "max_date":
   "2026-03-03"}'`), else the span_models asset's COST_ATTRIBUTION_DBT_MIN_DATE /
   _MAX_DATE, else every day. Read only when a model compiles (`execute`), never while
   dbt parses: the saved parse then stays valid from one day to the next, where a window
   passed as vars or read at parse time makes dbt parse the whole project again. #}
{% macro partition_bound(name, env_name, everything) -%}
  {%- if execute -%}
    {{- var(name, env_var(env_name, everything)) -}}
  {%- else -%}
    {{- everything -}}
  {%- endif -%}
{%- endmacro %}

{% macro in_partition_window(column) -%}
  {{ column }} >= cast('{{ partition_bound("min_date", "COST_ATTRIBUTION_DBT_MIN_DATE", "1970-01-01") }}' as date)
  and {{ column }} < cast('{{ partition_bound("max_date", "COST_ATTRIBUTION_DBT_MAX_DATE", "2999-01-01") }}' as date)
{%- endmacro %}

{# Idempotent daily writes: replace whole days. delete+insert on DuckDB; Spark
   overwrites the dt partitions instead (insert_overwrite). #}
{% macro daily_incremental_strategy() -%}
  {{ return('insert_overwrite' if target.type == 'spark' else 'delete+insert') }}
{%- endmacro %}
