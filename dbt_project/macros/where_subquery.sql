{# dbt's get_where_subquery (global_project/macros/materializations/tests/
   where_subquery.sql) with one addition: a test configured `where: partition_window`
   (dbt_project.yml) reads only the days of the run's partition window. Written in
   dbt_project.yml as a var, the window would be rendered when dbt parses the project and
   every new day would cost a full re-parse (macros/partition_window.sql). #}
{% macro get_where_subquery(relation) -%}
    {% set where = config.get('where', '') %}
    {% if where == 'partition_window' %}
        {% set where = in_partition_window('dt') %}
    {% endif %}
    {% if where %}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {% do return(filtered) %}
    {%- else -%}
        {% do return(relation) %}
    {%- endif -%}
{%- endmacro %}
