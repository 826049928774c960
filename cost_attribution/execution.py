"""How deployed runs execute their steps.

Each step of a multiprocess run would otherwise start a fresh Python process and
import the code location (dagster, dbt, scikit-learn, Great Expectations: ~15 s on
this hardware). A forkserver that has preloaded the definitions forks each step in
milliseconds instead. The warehouse pool (limit 1, deploy/dagster.yaml) still
serializes the DuckDB writers; `max_concurrent` only lets read-only work overlap.
In-process execution (`cost-attribution run`, tests) ignores this.
"""

import dagster as dg

step_executor = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "start_method": {"forkserver": {"preload_modules": ["cost_attribution.definitions"]}},
    },
    name="preloaded_multiprocess",
)
