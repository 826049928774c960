{{ config(materialized='view' if member_rows_as_view() else 'incremental',
          incremental_strategy=daily_incremental_strategy(), unique_key='dt') }}
-- Adjusted request volume and work per allocated member, experiment cell, service,
-- source and day (sources and measures: macros/member_spans.sql).
-- period = 'post': after the member's allocation (what the cell did to it);
-- period = 'pre': before it (the same member untreated: a CUPED covariate, never treated).
-- A member's days before or after its allocation day come whole from member_day_usage;
-- its allocation day, split at allocated_at, from same_day_usage. A view on DuckDB
-- (macros/member_exposure.sql, member_rows_as_view): every day, joined when read.
{{ joined_member_rows(ref('member_day_usage'), ref('same_day_usage'), ['service', 'source'],
                      member_usage_measures().keys() | list, pre_period=true) }}
