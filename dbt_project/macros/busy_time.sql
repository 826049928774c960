{# Whether enriched_spans computes busy time (a SERVER span's duration minus the time its
   own calls were in flight): only when the analysis reads it (AnalysisSettings.work_measure
   = "busy"). It is the model's costliest part (10M spans: 4.5 s with it, 2.1 s without)
   and the default work measure is the span's duration. The span_models asset sets
   COST_ATTRIBUTION_DBT_BUSY_TIME for its dbt process; by hand, `--vars '{"busy_time":
   true}'`. Read only when a model compiles, like the partition window, so dbt's saved
   parse serves either. Days built without it have busy = null, and the usage statistics
   refuse to read them as busy time (attribution.member_usage.missing_busy_days). #}
{% macro busy_time_wanted() -%}
  {%- if execute -%}
    {{- return((var('busy_time', env_var('COST_ATTRIBUTION_DBT_BUSY_TIME', 'false')) | string | lower) in ['true', '1']) -}}
  {%- else -%}
    {{- return(false) -}}
  {%- endif -%}
{%- endmacro %}
