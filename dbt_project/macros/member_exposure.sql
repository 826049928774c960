{#
  Joins per-member rows of the span models with the members' experiment allocations.

  `per_member_day` is aggregated per (dt, member_id, <keys>) already, with the columns
  named in `measures`; `per_span` has rows with dt, member_id, <keys>, start_unix_nano
  and the span-level expressions `measures` sums (measure name -> expression). Only the
  spans of members allocated on their own day are read from `per_span`: pass it through
  allocated_on_the_day() so it holds just those.
  Members allocated before that day count all of the day (exposed_member_days); members
  allocated during the day itself are compared span by span (exposed_same_day).
  Aggregating before the join keeps a 10M-span day cheap: a member sits in several
  experiments, so a span-level join would multiply the spans.

  With pre_period=true the member's traffic before its allocation is kept as well,
  marked period = 'pre' (the same member not yet treated: a covariate for variance
  reduction, never counted as treated); traffic after it is period = 'post'.
  Both halves give their columns in one order: dt, experiment_id, cell, member_id,
  <keys>, <measures>[, period].
#}
{% macro exposed_member_rows(per_member_day, per_span, keys, measures=none, pre_period=false) -%}
    {{ exposed_member_days(per_member_day, keys, (measures or default_member_measures()).keys() | list, pre_period) }}
    union all
    {{ exposed_same_day(per_span, keys, measures, pre_period) }}
{%- endmacro %}


{% macro default_member_measures() -%}
    {{ return({'requests': 'adjusted_count', 'sampled_spans': '1'}) }}
{%- endmacro %}


{# The days of members allocated on an earlier day (period 'post') or, with pre_period,
   a later one ('pre'): one join, whatever the period. `measure_names` are columns of
   `per_member_day`. #}
{% macro exposed_member_days(per_member_day, keys, measure_names, pre_period=false) -%}
    select m.dt, a.experiment_id, a.cell, m.member_id{% for key in keys %}, m.{{ key }}{% endfor %}
           {%- for name in measure_names %}, m.{{ name }}{% endfor %}
           {%- if pre_period %}, case when a.allocated_date < m.dt then 'post' else 'pre' end as period{% endif %}
    from {{ per_member_day }} as m
    inner join {{ ref('member_exposure') }} as a
        on a.member_id = m.member_id and a.allocated_date {{ '<>' if pre_period else '<' }} m.dt
{%- endmacro %}


{# The days members were allocated on, span by span: the spans from allocated_at on are
   'post', those before it (with pre_period) 'pre'. #}
{% macro exposed_same_day(per_span, keys, measures=none, pre_period=false) -%}
    {%- set measures = measures or default_member_measures() -%}
    {%- set periods = [('post', '>=')] + ([('pre', '<')] if pre_period else []) -%}
    {%- for period, time_cmp in periods %}
    {%- if not loop.first %}
    union all
    {%- endif %}
    select s.dt, a.experiment_id, a.cell, s.member_id{% for key in keys %}, s.{{ key }}{% endfor %}
           {%- for name, expression in measures.items() %}, sum({{ expression }}) as {{ name }}{% endfor %}
           {%- if pre_period %}, '{{ period }}' as period{% endif %}
    from {{ per_span }} as s
    inner join {{ ref('member_exposure') }} as a
        on a.member_id = s.member_id and a.allocated_date = s.dt
    where s.start_unix_nano {{ time_cmp }} a.allocated_at_unix_nano
    group by s.dt, a.experiment_id, a.cell, s.member_id{% for key in keys %}, s.{{ key }}{% endfor %}
    {%- endfor %}
{%- endmacro %}


{# The rows of a model joined per member x experiment (member_service_usage,
   member_service_latency): the per-member days joined with the allocations, then the
   allocation days as same_days stores them, in one column order. Where the model is a
   table (not member_rows_as_view()), only the partition window's days. #}
{% macro joined_member_rows(member_days, same_days, keys, measure_names, pre_period=false) -%}
    {%- set columns = keys + measure_names + (['period'] if pre_period else []) -%}
    {%- set window = '' if member_rows_as_view() else 'where ' ~ in_partition_window('dt') -%}
    select * from (
        {{ exposed_member_days(member_days, keys, measure_names, pre_period) }}
    ) as member_days
    {{ window }}
    union all
    select dt, experiment_id, cell, member_id, {{ columns | join(', ') }}
    from {{ same_days }}
    {{ window }}
{%- endmacro %}


{#
  The rows of `per_span_sql` (a select with dt and member_id) whose member was allocated
  on that very day: the only spans exposed_member_rows compares one by one. A semi join
  before anything reads them, so the span-level branch sees a few members' spans instead
  of the day's (and a model defines its spans as SQL text read twice rather than a CTE
  read twice, which DuckDB would materialize: every span of the day through its buffer).
#}
{% macro allocated_on_the_day(per_span_sql) -%}
    select s.*
    from ({{ per_span_sql }}) as s
    where exists (
        select 1 from {{ ref('member_exposure') }} as a
        where a.member_id = s.member_id and a.allocated_date = s.dt
    )
{%- endmacro %}


{#
  How member_service_usage and member_service_latency (per member x experiment) are kept.
  On DuckDB they are views over the per-member days (member_day_usage, member_day_latency)
  joined with the allocations when read: a member in three experiments would otherwise
  be written three times (a 10M-span day: 7.6M + 10.7M rows instead of 3.0M + 4.2M),
  and the statistics that read them run in the same database. On Spark they stay tables
  by day: the one-machine assets read them from DuckDB, so they are copied there as rows.
#}
{% macro member_rows_as_view() -%}
    {{ return(target.type == 'duckdb') }}
{%- endmacro %}
