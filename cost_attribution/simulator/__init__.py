"""World simulator: landing zones (contract.md) with their own ground truth.

`generate_world(out_dir, config)` writes traces (OTLP JSON and/or flat Parquet),
allocations, experiments/services catalogs, FOCUS hourly costs, usage metrics,
business metrics and truth.json, and returns the truth dict. `WorldConfig()` mirrors
the sample world's size; `small_world_config()` is a seconds-fast world for tests;
`WorldConfig(target_spans_per_day=10_000_000)` is the benchmark world.
"""

from cost_attribution.simulator.config import (
    DirtyRecordCounts, DriftSpec, EdgeSpec, ExperimentSpec, SamplingDomain, ServiceSpec, WorldConfig)
from cost_attribution.simulator.world import generate_world, small_world_config

__all__ = [
    "DirtyRecordCounts", "DriftSpec", "EdgeSpec", "ExperimentSpec", "SamplingDomain", "ServiceSpec",
    "WorldConfig", "generate_world", "small_world_config",
]
