"""Parameters of a simulated world: services, call graph, experiments, samplers, knobs.

Every number that shapes the world lives here so that tests, the demo and benchmarks
differ only by configuration, never by code path.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceSpec:
    """One service and its true cost model.

    autoscale: instances(hour) = max(min_instances, ceil(requests / capacity)); in a live
    world the driver is CPU: ceil(cpu_seconds / (capacity x cpu_seconds_per_request)), which
    is the same curve as long as requests keep their base work.
    static: a fixed fleet sized for peak x static_headroom, so extra load costs $0.
    cpu_seconds_per_request: base work of one request (live worlds: SERVER self time and
    usage_metrics cpu_seconds).
    """

    name: str
    owner: str
    sku: str
    list_price_per_hour: float
    capacity_per_instance_hour: float
    scaling: str = "autoscale"
    min_instances: int = 1
    static_headroom: float = 2.5
    deprecated: bool = False
    tier: int = 2
    cpu_seconds_per_request: float = 0.01


@dataclass(frozen=True)
class EdgeSpec:
    """caller calls callee `calls_per_request` times per SERVER span of the caller.

    regular=True draws floor(r) + Bernoulli(frac(r)) calls (e.g. one auth check per
    request) instead of Poisson(r).
    """

    caller: str
    callee: str
    calls_per_request: float
    regular: bool = False


@dataclass(frozen=True)
class CellSpec:
    """One non-control cell of an experiment and what it changes, at 100% of its members.

    edge_multipliers: (caller, callee, multiplier) on an existing edge's call rate.
    new_edges: (caller, callee, calls_per_request) for an edge that control never uses.
    work_multipliers: (service, multiplier) on the work (CPU, SERVER self time) of each
    of that service's requests, without changing how many there are.
    business_metrics: (metric, delta_pct, ci_half_width_pct) from the experimentation platform.
    """

    name: str
    edge_multipliers: tuple[tuple[str, str, float], ...] = ()
    new_edges: tuple[tuple[str, str, float], ...] = ()
    work_multipliers: tuple[tuple[str, float], ...] = ()
    business_metrics: tuple[tuple[str, float, float], ...] = ()


@dataclass(frozen=True)
class ShipSpec:
    """A cell shipped to 100% of traffic at 00:00 UTC `days_before_end` days before end_date.

    From then on every member (allocated or not) gets the cell, in traces, usage metrics
    and the bill. capacity_factors: (service, factor) on the capacity of one instance from
    the ship date on (a cost-structure change that came with shipping, e.g. a larger
    memory footprint at full rollout), so the realized cost differs from the projection
    by construction: factor < 1 under-projects, > 1 over-projects.
    """

    cell: str
    days_before_end: int
    capacity_factors: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment: a control cell and one or more treatment cells.

    Without `cells`, the single treatment cell is `treatment`, built from the fields
    edge_multipliers / new_edges / work_multipliers / business_metrics.

    Timing: with start_days_before_end = None the experiment starts on the first trace day
    after the pre-period and every member is allocated a few days before the trace window
    (the original world). With a number, it starts at 00:00 UTC that many days before
    end_date (weeks before the traces if you like) and members are allocated along the
    ramp: ramp_steps ((days after start, fraction of allocation_fraction reached), ...),
    linear between points, or else linearly over ramp_days. Members whose allocation
    falls after the last trace day are not allocated yet (a partial ramp).
    """

    id: str
    name: str
    owner: str = "growth-team"
    # (caller, callee, multiplier) applied to an existing edge's call rate in treatment.
    edge_multipliers: tuple[tuple[str, str, float], ...] = ()
    # (caller, callee, calls_per_request) for an edge that control never uses.
    new_edges: tuple[tuple[str, str, float], ...] = ()
    allocation_fraction: float = 0.5
    treatment_share: float = 0.5
    # (metric, delta_pct, ci_half_width_pct) reported by the experimentation platform.
    business_metrics: tuple[tuple[str, float, float], ...] = ()
    work_multipliers: tuple[tuple[str, float], ...] = ()
    cells: tuple[CellSpec, ...] = ()  # non-control cells; empty: one `treatment` cell
    control_cell: str = "control"
    # Intended split over (control, *cells); empty: even, or treatment_share for one cell.
    weights: tuple[float, ...] = ()
    kind: str = "ab"  # "aa": calibration, no effect expected
    start_days_before_end: int | None = None
    ramp_days: float = 1.0
    ramp_steps: tuple[tuple[float, float], ...] = ()
    shipped: ShipSpec | None = None  # live worlds: a cell that went to 100%

    @property
    def treatment_cells(self) -> tuple[CellSpec, ...]:
        if self.cells:
            return self.cells
        return (CellSpec("treatment", self.edge_multipliers, self.new_edges, self.work_multipliers,
                         self.business_metrics),)

    @property
    def cell_names(self) -> tuple[str, ...]:
        return (self.control_cell,) + tuple(c.name for c in self.treatment_cells)

    @property
    def cell_weights(self) -> tuple[float, ...]:
        """Intended share of allocated members per cell, (control, *treatment cells)."""
        n = len(self.treatment_cells) + 1
        if self.weights:
            if len(self.weights) != n or min(self.weights) < 0:
                raise ValueError(f"{self.id}: weights {self.weights} must give {n} non-negative shares")
            total = float(sum(self.weights))
            return tuple(w / total for w in self.weights)
        if not self.cells:
            return (1.0 - self.treatment_share, self.treatment_share)
        return (1.0 / n,) * n

    @property
    def even_weights(self) -> bool:
        weights = self.cell_weights
        return max(weights) - min(weights) < 1e-12


@dataclass(frozen=True)
class SamplingDomain:
    """A client domain with its own head-sampling rate and way of recording it.

    convention: "attribute" (span attribute sampling.probability), "tracestate"
    (OTEP 235 `ot=th:<hex>` threshold) or "none" (p = 1, nothing written).
    """

    name: str
    probability: float
    convention: str
    member_share: float


@dataclass(frozen=True)
class DriftSpec:
    """A service moves to another instance type `days_before_end` days before the end."""

    service: str
    days_before_end: int
    new_sku: str
    new_list_price_per_hour: float
    new_capacity_per_instance_hour: float


@dataclass(frozen=True)
class DirtyRecordCounts:
    """Dirty records injected into every trace day file (see contract: quarantine)."""

    truncated_lines: int = 1
    duplicate_spans: int = 1
    negative_duration_spans: int = 1
    missing_service_name_spans: int = 1


DEFAULT_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("api-gateway", "team-api", "m7i.2xlarge", 0.4032, 500_000, min_instances=4,
                cpu_seconds_per_request=0.005),
    ServiceSpec("metadata-svc", "team-metadata", "r7i.2xlarge", 0.5292, 600_000, min_instances=3,
                cpu_seconds_per_request=0.02),
    ServiceSpec("images-svc", "team-images", "c7i.2xlarge", 0.357, 500_000, min_instances=2,
                cpu_seconds_per_request=0.015),
    ServiceSpec("recs-svc", "team-recs", "r6i.4xlarge", 1.008, 300_000, min_instances=4,
                cpu_seconds_per_request=0.035),
    ServiceSpec("auth-svc", "team-auth", "c7i.xlarge", 0.1785, 1_500_000, scaling="static",
                cpu_seconds_per_request=0.006),
    ServiceSpec("profile-svc", "team-profile", "m7i.xlarge", 0.2016, 400_000, min_instances=2,
                cpu_seconds_per_request=0.008),
    ServiceSpec("cdn-origin", "team-cdn", "c7i.2xlarge", 0.357, 800_000, min_instances=2,
                cpu_seconds_per_request=0.003),
    ServiceSpec("legacy-ratings", "team-legacy", "t3.large", 0.0832, 40_000, deprecated=True,
                cpu_seconds_per_request=0.02),
    ServiceSpec("search-svc", "team-search", "c7i.xlarge", 0.1785, 200_000, min_instances=2,
                cpu_seconds_per_request=0.025),
)

DEFAULT_EDGES: tuple[EdgeSpec, ...] = (
    EdgeSpec("api-gateway", "auth-svc", 1.0, regular=True),
    EdgeSpec("api-gateway", "profile-svc", 0.6),
    EdgeSpec("api-gateway", "metadata-svc", 1.6),
    EdgeSpec("api-gateway", "images-svc", 0.8),
    EdgeSpec("api-gateway", "recs-svc", 0.6),
    EdgeSpec("api-gateway", "search-svc", 0.2),
    EdgeSpec("api-gateway", "legacy-ratings", 0.03),
    EdgeSpec("recs-svc", "metadata-svc", 0.5),
    EdgeSpec("images-svc", "cdn-origin", 1.2),
)

DEFAULT_EXPERIMENTS: tuple[ExperimentSpec, ...] = (
    # Both paths into metadata-svc scale with recs, so metadata's delta is exactly +40%.
    ExperimentSpec(
        "smarter-prefetch", "Smarter Pre-fetch",
        edge_multipliers=(("api-gateway", "metadata-svc", 1.4), ("api-gateway", "recs-svc", 1.4)),
        business_metrics=(("streaming_hours", 0.7, 0.5),),
    ),
    ExperimentSpec("aa-calibration", "A/A", business_metrics=(("streaming_hours", 0.0, 0.5),)),
    ExperimentSpec(
        "login-refresh", "Login token refresh",
        edge_multipliers=(("api-gateway", "auth-svc", 1.5),),
        business_metrics=(("retention_d30", 0.1, 0.3),),
    ),
    ExperimentSpec(
        "ratings-badge", "Ratings badge",
        edge_multipliers=(("api-gateway", "legacy-ratings", 8.5),),
        business_metrics=(("streaming_hours", 0.2, 0.5),),
    ),
    ExperimentSpec(
        "search-personalization", "Personalized search",
        new_edges=(("search-svc", "profile-svc", 1.0),),
        business_metrics=(("search_success_rate", 1.1, 0.6),),
    ),
)

DEFAULT_SAMPLING_DOMAINS: tuple[SamplingDomain, ...] = (
    SamplingDomain("tv", 0.015, "attribute", 0.559),
    SamplingDomain("mobile", 0.01, "tracestate", 0.44),
    # A few internal QA members traced at 100%: no sampling information at all.
    SamplingDomain("qa", 1.0, "none", 0.001),
)

DEFAULT_DRIFT = DriftSpec("recs-svc", 4, "r7i.4xlarge", 1.0584, 400_000)


def live_experiments(trace_days: int, pre_period_days: int) -> tuple[ExperimentSpec, ...]:
    """Experiments as production runs them (issue 15), for a live world whose trace window
    is pre_period_days + trace_days days ending on end_date."""
    first_trace_day = trace_days + pre_period_days - 1  # days before end_date
    return (
        # Started five weeks before the end on an uneven 40/60 split; the ramp went to 30%
        # of the allocation on day 1, 75% on day 15 and is still climbing (partial ramp).
        ExperimentSpec(
            "smarter-prefetch", "Smarter Pre-fetch (ramped)",
            edge_multipliers=(("api-gateway", "metadata-svc", 1.4), ("api-gateway", "recs-svc", 1.4)),
            business_metrics=(("streaming_hours", 0.7, 0.5),),
            weights=(0.4, 0.6), allocation_fraction=0.8, start_days_before_end=35,
            ramp_steps=((1.0, 0.3), (14.0, 0.3), (15.0, 0.75), (60.0, 1.0)),
        ),
        ExperimentSpec("aa-calibration", "A/A", kind="aa", business_metrics=(("streaming_hours", 0.0, 0.5),),
                       start_days_before_end=12, ramp_days=2.0),
        # Static-only: auth-svc is provisioned for peak, so +50% auth checks cost $0.
        ExperimentSpec(
            "login-refresh", "Login token refresh",
            edge_multipliers=(("api-gateway", "auth-svc", 1.5),),
            business_metrics=(("retention_d30", 0.1, 0.3),),
            start_days_before_end=20,
        ),
        # Three cells; both raise calls to a deprecated, tiny service. Started three days before
        # the traces and ramping over five, so many members have pre-period traces.
        ExperimentSpec(
            "ratings-badge", "Ratings badge",
            cells=(
                CellSpec("badge", edge_multipliers=(("api-gateway", "legacy-ratings", 8.5),),
                         business_metrics=(("streaming_hours", 0.2, 0.5),)),
                CellSpec("badge-large", edge_multipliers=(("api-gateway", "legacy-ratings", 16.0),),
                         business_metrics=(("streaming_hours", 0.3, 0.5),)),
            ),
            allocation_fraction=0.6, start_days_before_end=first_trace_day + 3, ramp_days=5.0,
        ),
        # Heavier requests: same number of thumbnails, 60% more work each.
        ExperimentSpec(
            "hd-images", "HD images",
            cells=(CellSpec("hd", work_multipliers=(("images-svc", 1.6),),
                            business_metrics=(("streaming_hours", 0.4, 0.5),)),),
            start_days_before_end=trace_days - 1, ramp_days=0.5,
        ),
        # Savings: 30% fewer recommendation calls; metadata-svc, downstream of recs, moves about -5%.
        ExperimentSpec(
            "lean-recs", "Leaner recommendations",
            edge_multipliers=(("api-gateway", "recs-svc", 0.7),),
            business_metrics=(("streaming_hours", -0.1, 0.5),),
            start_days_before_end=18, ramp_days=3.0,
        ),
        ExperimentSpec(
            "search-personalization", "Personalized search",
            new_edges=(("search-svc", "profile-svc", 1.0),),
            business_metrics=(("search_success_rate", 1.1, 0.6),),
            start_days_before_end=9,
        ),
    )


@dataclass
class WorldConfig:
    seed: int = 7
    end_date: datetime.date = datetime.date(2026, 10, 31)  # last trace day
    trace_days: int = 4  # days with experiments running (the last ones)
    pre_period_days: int = 0  # trace days before the experiments start (CUPED covariate)
    history_days: int = 28  # cost + usage history, ending on end_date
    n_members: int = 4700
    target_spans_per_day: int | None = None
    span_formats: tuple[str, ...] = ("otlp_json",)
    dirty_records: bool = True
    dirty_counts: DirtyRecordCounts = field(default_factory=DirtyRecordCounts)

    services: tuple[ServiceSpec, ...] = DEFAULT_SERVICES
    edges: tuple[EdgeSpec, ...] = DEFAULT_EDGES
    root_service: str = "api-gateway"
    experiments: tuple[ExperimentSpec, ...] = DEFAULT_EXPERIMENTS
    sampling_domains: tuple[SamplingDomain, ...] = DEFAULT_SAMPLING_DOMAINS
    # caller -> callee edges where the caller drops trace context.
    broken_edges: tuple[tuple[str, str], ...] = (("images-svc", "cdn-origin"),)
    # The callee of a broken edge head-samples its (new, anonymous) traces itself.
    broken_callee_sampling_probability: float = 0.02
    drift: DriftSpec | None = DEFAULT_DRIFT
    # (days before end_date, share): on that trace day this share of member traces lost
    # the root span's enduser.id (a client release dropped the tag), so the day's trace
    # coverage falls under the gate while its traffic is unchanged (issue 14: never go dark).
    untagged_day: tuple[int, float] | None = None
    # Worlds that are not live: do the production usage metrics (and so the bill) carry the
    # experiments on their trace days? False is ../shared/sample-world: tests run on a sliver
    # of production that its metrics do not show, and truth.json prices the history as is.
    tests_in_production: bool = True

    # Production as it really is (issue 15): experiments start on their own day and ramp,
    # a member is treated from its allocated_at, usage metrics and the bill carry each
    # hour's treated share, requests have work (SERVER self time, usage cpu_seconds) and
    # autoscaling follows CPU. False keeps the original world, byte for byte.
    live: bool = False
    work_noise_sigma: float = 0.35  # lognormal sigma of one request's self time (live)
    network_ms: float = 0.4  # a CLIENT span's time outside its callee's SERVER span (live)
    # In-process operations (a query, a render) traced as INTERNAL children of SERVER spans:
    # Poisson(this) per SERVER span. Real OTLP traffic carries many (half the spans of the
    # public otlp2parquet sample); the method never counts them, and the span models drop
    # them before writing span-grain rows. 0 keeps a world's files as they were.
    internal_spans_per_server: float = 0.0

    # Member activity: root requests/day ~ Poisson(activity x daily_noise x day_factor).
    mean_root_requests_per_member_day: float = 47.0
    activity_shape: float = 0.7  # gamma shape across members (overdispersion)
    daily_activity_shape: float = 4.0  # gamma shape of member-day noise
    allocation_lead_days: int = 3  # members are allocated up to this many days early

    # Production: the traced members are a sample; this fixes the production volume.
    production_root_requests_per_day: float = 160e6
    growth_per_day: float = 0.002
    weekend_factor: float = 1.12
    diurnal_amplitude: float = 0.45
    diurnal_peak_hour_utc: int = 20
    usage_noise: float = 0.01  # relative noise of hourly metrics around the expectation

    # Billing
    discount: float = 0.2  # EffectiveCost = ListCost x (1 - discount)
    list_price_jitter: float = 0.005
    support_fee_per_day: float = 310.0
    credit_per_day: float = -55.0
    untagged_instance_price_per_hour: float = 0.0416

    # Output layout
    spans_per_line: int = 400  # spans per ExportTraceServiceRequest line
    spans_per_part_file: int = 500_000
    otlp_compression: str = "gzip"  # "gzip" (level 1) or "none" (plain .json)

    @property
    def experiment_start(self) -> datetime.date:
        return self.end_date - datetime.timedelta(days=self.trace_days - 1)

    @property
    def first_trace_day(self) -> datetime.date:
        return self.experiment_start - datetime.timedelta(days=self.pre_period_days)

    @property
    def trace_dates(self) -> list[datetime.date]:
        n = self.pre_period_days + self.trace_days
        return [self.first_trace_day + datetime.timedelta(days=i) for i in range(n)]

    def start_of(self, experiment: ExperimentSpec) -> datetime.date:
        """The experiment's first day (00:00 UTC)."""
        if experiment.start_days_before_end is None:
            return self.experiment_start
        return self.end_date - datetime.timedelta(days=experiment.start_days_before_end)

    def ship_date_of(self, experiment: ExperimentSpec) -> datetime.date | None:
        """The first day the shipped cell runs at 100% (00:00 UTC), or None."""
        if experiment.shipped is None:
            return None
        return self.end_date - datetime.timedelta(days=experiment.shipped.days_before_end)

    @property
    def history_dates(self) -> list[datetime.date]:
        first = self.end_date - datetime.timedelta(days=self.history_days - 1)
        return [first + datetime.timedelta(days=i) for i in range(self.history_days)]
