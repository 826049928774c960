{# The lake directory of the spark target; the same rule as profiles.yml and
   cost_attribution.attribution.spark_target.lake_dir(). #}
{% macro spark_lake_dir() -%}
  {{ return(env_var('COST_ATTRIBUTION_SPARK_DIR', var('warehouse_path', env_var('COST_ATTRIBUTION_WAREHOUSE', 'warehouse.duckdb')) ~ '.spark')) }}
{%- endmacro %}

{# on-run-start: make source('raw', ...) resolve on Spark. The Dagster ingest assets
   normalise the landing zone (dedup, quarantine, sampling probability) and
   spark_target.export_raw_sources() writes their output as Parquet under
   <lake>/raw/: spans/dt=YYYY-MM-DD/*.parquet, allocations/*.parquet,
   experiments/*.parquet. Here they become external tables (dropping one never
   deletes its files). Recreated on every run so Spark sees new days and files.
   On DuckDB the ingest assets write raw.* directly: nothing to do. #}
{% macro register_raw_sources() %}
  {{ return(adapter.dispatch('register_raw_sources')()) }}
{% endmacro %}

{% macro default__register_raw_sources() %}
{% endmacro %}

{% macro spark__register_raw_sources() %}
  {%- set raw_dir = spark_lake_dir() ~ '/raw' -%}
  {% do run_query('create database if not exists raw') %}
  {% do run_query('drop table if exists raw.spans') %}
  {% do run_query("create table raw.spans using parquet location '" ~ raw_dir ~ "/spans'") %}
  {% do run_query('alter table raw.spans recover partitions') %}
  {% for name in ['allocations', 'experiments'] %}
    {% do run_query('drop table if exists raw.' ~ name) %}
    {% do run_query("create table raw." ~ name ~ " using parquet location '" ~ raw_dir ~ "/" ~ name ~ "'") %}
  {% endfor %}
{% endmacro %}
