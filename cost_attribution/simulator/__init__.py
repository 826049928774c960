"""World simulator: landing zones (contract.md) with their own ground truth.

`generate_world(out_dir, config)` writes traces (OTLP JSON and/or flat Parquet),
allocations, experiments/services catalogs, FOCUS hourly costs, usage metrics,
business metrics and truth.json, and returns the truth dict. `WorldConfig()` mirrors
the sample world's size; `small_world_config()` is a seconds-fast world for tests;
`WorldConfig(target_spans_per_day=10_000_000)` is the benchmark world.
`live_world_config()` / `small_live_world_config()` are production as it really is:
experiments running for weeks on ramps and uneven splits, any cells, heavier requests,
cpu_seconds, INTERNAL spans (in-process work the method never counts: 45% of the demo's
spans, as in real OTLP traffic), and a truth with both incremental cost and bill change per cell.
`shipped_world_config()` ships three cells to 100% inside the trace window (ShipSpec),
two with a cost-structure change that makes their projections miss by construction;
truth.json's `shipped` holds each one's realized change.
"""

from cost_attribution.simulator.config import (
    CellSpec, DirtyRecordCounts, DriftSpec, EdgeSpec, ExperimentSpec, SamplingDomain, ServiceSpec, ShipSpec,
    WorldConfig)
from cost_attribution.simulator.world import (
    generate_world, live_world_config, shipped_world_config, small_live_world_config, small_world_config)

__all__ = [
    "CellSpec", "DirtyRecordCounts", "DriftSpec", "EdgeSpec", "ExperimentSpec", "SamplingDomain", "ServiceSpec",
    "ShipSpec", "WorldConfig", "generate_world", "live_world_config", "shipped_world_config",
    "small_live_world_config", "small_world_config",
]
