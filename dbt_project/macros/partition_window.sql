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

{# Idempotent daily writes: a build replaces every day of its partition window, the days it
   computed no rows for included (they end up empty). dbt's delete+insert deletes only the
   days present in the new rows, so a day rebuilt empty kept its old rows: with the
   allocations moved off a day, same_day_usage kept that day's rows and member_service_usage
   counted those members' day twice. On DuckDB: replace_window (below). On Spark:
   insert_overwrite of the dt partitions, after drop_window_partitions has dropped the
   window's existing ones (a pre-hook of the incremental models, dbt_project.yml). #}
{% macro daily_incremental_strategy() -%}
  {{ return('insert_overwrite' if target.type == 'spark' else 'replace_window') }}
{%- endmacro %}

{# incremental_strategy='replace_window' (dbt finds it by this name): delete the partition
   window's days, insert the new rows, in the materialization's transaction. #}
{% macro get_incremental_replace_window_sql(arg_dict) -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ arg_dict['target_relation'] }} where {{ in_partition_window('dt') }};
    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }} from {{ arg_dict['temp_relation'] }}
{%- endmacro %}

{# pre-hook: on Spark, drop the window's existing dt partitions of an incremental model
   before insert_overwrite writes the days it has rows for. Nothing elsewhere. #}
{% macro drop_window_partitions() -%}
  {%- if execute and target.type == 'spark' and model.config.materialized == 'incremental' -%}
    {%- set existing = adapter.get_relation(this.database, this.schema, this.identifier) -%}
    {%- if existing is not none -%}
      {%- set days = run_query("select distinct cast(dt as string) from " ~ this ~ " where " ~ in_partition_window('dt')) -%}
      {%- for day in days.columns[0].values() -%}
        {%- do run_query("alter table " ~ this ~ " drop if exists partition (dt = '" ~ day ~ "')") -%}
      {%- endfor -%}
    {%- endif -%}
  {%- endif -%}
{%- endmacro %}
