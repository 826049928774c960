{#
  Joins per-member rows of the span models with the members' experiment allocations,
  counting only what happened after the allocation.

  `per_member_day` is aggregated per (dt, member_id, <keys>) already: members allocated
  before that day count all of it. Members allocated during the day itself are
  compared span by span (`per_span`: rows with dt, member_id, <keys>, adjusted_count,
  start_unix_nano). Aggregating before the join keeps a 10M-span day cheap: a member
  sits in several experiments, so a span-level join would multiply the spans.
#}
{% macro exposed_member_rows(per_member_day, per_span, keys) -%}
    select m.dt, a.experiment_id, a.cell, m.member_id{% for key in keys %}, m.{{ key }}{% endfor %},
           m.requests, m.sampled_spans
    from {{ per_member_day }} as m
    inner join {{ ref('member_exposure') }} as a
        on a.member_id = m.member_id and a.allocated_date < m.dt
    union all
    select s.dt, a.experiment_id, a.cell, s.member_id{% for key in keys %}, s.{{ key }}{% endfor %},
           sum(s.adjusted_count) as requests, count(*) as sampled_spans
    from {{ per_span }} as s
    inner join {{ ref('member_exposure') }} as a
        on a.member_id = s.member_id and a.allocated_date = s.dt
    where s.start_unix_nano >= a.allocated_at_unix_nano
    group by s.dt, a.experiment_id, a.cell, s.member_id{% for key in keys %}, s.{{ key }}{% endfor %}
{%- endmacro %}
