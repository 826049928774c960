"""One home per setting: AnalysisSettings for the analysis, environment.py for the
environment, both listed in docs/settings.md; the report's flag and the alert share
one cost threshold."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import cost_attribution
from cost_attribution import environment
from cost_attribution.alerts import AlertPolicy, alert_resources, build_alert_sensor
from cost_attribution.resources import AnalysisSettings, default_resources

PACKAGE_DIR = Path(cost_attribution.__file__).parent
SETTINGS_DOC = PACKAGE_DIR.parent / "docs" / "settings.md"


def _env_names() -> list[str]:
    return [value for name, value in vars(environment).items() if name.endswith("_ENV")]


def test_every_setting_and_environment_variable_is_documented():
    doc = SETTINGS_DOC.read_text(encoding="utf-8")
    missing = [f"`{name}`" for name in AnalysisSettings.model_fields if f"| `{name}` |" not in doc]
    missing += [f"`{name}`" for name in _env_names() if f"`{name}`" not in doc]
    assert missing == [], f"add to {SETTINGS_DOC}: {missing}"


def test_only_environment_py_reads_the_environment():
    readers = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")
                 and isinstance(n.value, ast.Name) and n.value.id == "os"]
        if reads:
            readers[path.relative_to(PACKAGE_DIR).as_posix()] = len(reads)
    # cli.py: Dagster's own DAGSTER_HOME; dbt_project.py: hands the environment to `dbt parse`.
    assert set(readers) == {"environment.py", "cli.py", "dbt_project.py"}, readers
    assert readers["cli.py"] == 1 and readers["dbt_project.py"] == 1


def test_the_report_flag_and_the_cost_alert_follow_one_threshold(monkeypatch):
    assert "cost_threshold_usd" not in AlertPolicy.model_fields  # the policy has no threshold of its own
    monkeypatch.setenv(environment.COST_THRESHOLD_ENV, "2500")
    assert default_resources()["settings"].cost_alert_threshold_usd == 2500.0
    assert "alert_policy" in alert_resources()
    sensor_resources = build_alert_sensor().required_resource_keys
    assert "settings" in sensor_resources  # the sensor reads AnalysisSettings.cost_alert_threshold_usd
    monkeypatch.delenv(environment.COST_THRESHOLD_ENV)
    assert default_resources()["settings"].cost_alert_threshold_usd == environment.DEFAULT_COST_THRESHOLD_USD


def test_a_bad_threshold_names_the_variable_and_the_fix(monkeypatch):
    monkeypatch.setenv(environment.COST_THRESHOLD_ENV, "ten thousand")
    with pytest.raises(ValueError, match=f"{environment.COST_THRESHOLD_ENV}='ten thousand': not a number. Fix:"):
        environment.cost_threshold_usd()


@pytest.mark.parametrize("read, name", [(environment.dbt_busy_time, environment.DBT_BUSY_TIME_ENV),
                                        (environment.smtp_starttls, environment.SMTP_STARTTLS_ENV)])
def test_every_true_false_variable_follows_one_rule(monkeypatch, read, name):
    monkeypatch.delenv(name, raising=False)
    assert read() is False
    for raw, expected in (("true", True), ("TRUE ", True), ("1", True), ("false", False), ("0", False)):
        monkeypatch.setenv(name, raw)
        assert read() is expected, raw
    monkeypatch.setenv(name, "yes")
    with pytest.raises(ValueError, match=f"{name}='yes': not true or false. Fix: set it to true"):
        read()


def test_reporting_functions_take_settings_as_arguments_without_defaults():
    from cost_attribution.reporting.html_report import build_html_report
    from cost_attribution.reporting.report import build_report

    for function, names in ((build_report, ("projection_days", "blind_spot_coverage", "cost_alert_threshold_usd")),
                            (build_html_report, ("projection_days",))):
        parameters = inspect.signature(function).parameters
        assert all(parameters[n].default is inspect.Parameter.empty for n in names), function.__name__


def test_the_cost_models_get_their_headroom_and_drift_tolerances_from_the_settings():
    """ModelConfig keeps defaults for direct library use; the assets pass the settings'
    values, and the two defaults must not drift apart."""
    from cost_attribution.estimation.assets import _model_config
    from cost_attribution.estimation.models import ModelConfig

    names = ("static_headroom", "price_change_tolerance", "residual_shift_tolerance", "cost_per_request_shift_tolerance")
    defaults = ModelConfig()
    assert all(getattr(AnalysisSettings(), n) == getattr(defaults, n) for n in names)
    tuned = AnalysisSettings(static_headroom=0.0, price_change_tolerance=0.2, residual_shift_tolerance=0.3,
                             cost_per_request_shift_tolerance=0.4)
    assert [getattr(_model_config(tuned), n) for n in names] == [0.0, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("floor", [0.0, -1e-6, 1.5, float("nan")])
def test_a_sampling_floor_outside_zero_to_one_is_refused(floor):
    with pytest.raises(ValueError, match="sampling_probability_floor"):
        AnalysisSettings(sampling_probability_floor=floor)
    assert AnalysisSettings(sampling_probability_floor=1.0).sampling_probability_floor == 1.0


def test_the_ingest_paths_default_to_the_settings_sampling_floor():
    from cost_attribution.ingest.parquet_sql import ingest_parquet_day
    from cost_attribution.ingest.readers import read_span_file, read_span_files
    from cost_attribution.ingest.span_stream import ingest_span_day

    default = AnalysisSettings().sampling_probability_floor
    for function in (ingest_parquet_day, ingest_span_day, read_span_file, read_span_files):
        assert inspect.signature(function).parameters["sampling_floor"].default == default, function.__name__
