{# Rows of the partition window Dagster is materializing: [min_date, max_date). #}
{% macro in_partition_window(column) -%}
  {{ column }} >= cast('{{ var("min_date") }}' as date) and {{ column }} < cast('{{ var("max_date") }}' as date)
{%- endmacro %}

{# Idempotent daily writes: replace whole days. delete+insert on DuckDB; Spark
   overwrites the dt partitions instead (insert_overwrite). #}
{% macro daily_incremental_strategy() -%}
  {{ return('insert_overwrite' if target.type == 'spark' else 'delete+insert') }}
{%- endmacro %}
