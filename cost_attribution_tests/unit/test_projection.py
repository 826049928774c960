"""Dollar intervals: the experiment interval from correlated joint draws covers the
true cost at its nominal rate (checked by simulation), and non-significant services
add width but no point estimate."""

import numpy as np
import pytest

from cost_attribution.estimation.projection import Z95, ServiceCostCurve, joint_intervals


def experiment_interval(curves, *args, **kwargs):
    """One family of curves through joint_intervals."""
    return joint_intervals([curves], *args, **kwargs)[0]


def _linear(name, dollars_per_unit_delta):
    grid = np.linspace(-1, 3, 401)
    return ServiceCostCurve(name, grid, dollars_per_unit_delta * grid)


def test_non_significant_services_widen_but_do_not_move_the_point():
    curves = [_linear("a", 10_000.0), _linear("b", 5_000.0)]
    point, low, high = experiment_interval(
        curves, np.array([0.4, 0.05]), np.array([0.1, 0.1]), np.array([True, False]), None
    )
    assert point == pytest.approx(4_000.0)
    alone = experiment_interval(curves[:1], np.array([0.4]), np.array([0.1]), np.array([True]), None)
    assert (high - low) > (alone[2] - alone[1])


def test_correlation_matters():
    curves = [_linear("a", 10_000.0), _linear("b", 10_000.0)]
    args = (curves, np.array([0.4, 0.4]), np.array([0.1, 0.1]), np.array([True, True]))
    _, lo_ind, hi_ind = experiment_interval(*args, np.eye(2))
    _, lo_cor, hi_cor = experiment_interval(*args, np.array([[1.0, 0.9], [0.9, 1.0]]))
    assert (hi_cor - lo_cor) > 1.25 * (hi_ind - lo_ind)


def test_interval_coverage_by_simulation():
    """Deltas estimated with known correlated noise: the 95% interval should contain
    the true cost in about 95% of 400 worlds."""
    rng = np.random.default_rng(11)
    true = np.array([0.4, 0.3, 0.0])
    sd = np.array([0.08, 0.06, 0.05])
    corr = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
    cov = corr * np.outer(sd, sd)
    curves = [_linear("a", 8_000.0), _linear("b", 6_000.0), _linear("c", 9_000.0)]
    true_cost = 8_000.0 * 0.4 + 6_000.0 * 0.3
    covered = 0
    worlds = 400
    for seed in range(worlds):
        estimate = rng.multivariate_normal(true, cov)
        _, low, high = experiment_interval(
            curves, estimate, sd * Z95, np.array([True, True, True]), corr, draws=2000, seed=seed
        )
        covered += low <= true_cost <= high
    assert 0.92 <= covered / worlds <= 0.98


def test_static_curve_prices_zero_until_capacity():
    grid = np.linspace(-1, 2, 301)
    static = ServiceCostCurve("auth", grid, np.where(grid > 1.0, 500.0 * (grid - 1.0), 0.0))
    point, low, high = experiment_interval([static], np.array([0.5]), np.array([0.2]), np.array([True]), None)
    assert point == 0.0 and low == 0.0 and high == 0.0
