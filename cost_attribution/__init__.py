"""cost_attribution: what an A/B test winner will add to the cloud bill.

Domains: ``ingest`` (landing zone -> raw warehouse tables), ``attribution`` (traces x
allocations -> per-service deltas), ``estimation`` (cost models and two-universe
projections), ``checks`` (data-quality and trust gates), ``reporting`` (report.json).
``definitions.py`` only assembles them.
"""
