"""The dbt resource must not reach the network before a dbt command (dagster-dbt asks the
executable for its version with `dbt --version`, which queries PyPI) nor build a dbt adapter
in the Dagster process that nothing uses."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster_dbt.core.resource as dbt_core_resource
from dagster_dbt.compat import DBT_PYTHON_VERSION

from cost_attribution.dbt_project import dbt_executable, dbt_resource


def test_the_venv_dbt_version_comes_from_its_package_without_running_dbt(monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(dbt_core_resource, "check_output", no_subprocess)
    resource = dbt_resource()
    assert Path(resource.dbt_executable) == Path(sys.executable).parent / "dbt" == Path(dbt_executable())
    assert resource._cli_version == DBT_PYTHON_VERSION


def test_another_dbt_executable_is_still_asked(monkeypatch, tmp_path):
    other = tmp_path / "dbt"
    other.write_text("#!/bin/sh\n")  # exists; never run (check_output is replaced)
    other.chmod(0o755)
    calls = []

    def fake_check_output(args, *rest, **kwargs):
        calls.append(args)
        return b"Core:\n  - installed: 1.9.4\n"

    monkeypatch.setattr(dbt_core_resource, "check_output", fake_check_output)
    resource = type(dbt_resource())(project_dir=str(dbt_resource().project_dir), dbt_executable=str(other))
    assert str(resource._cli_version) == "1.9.4"
    assert calls == [[str(other), "--version"]]


def test_no_dbt_adapter_is_built_in_the_dagster_process(monkeypatch):
    import dagster_dbt.core.resource as module

    def build_adapter(self, args):
        raise AssertionError("built a dbt adapter")

    monkeypatch.setattr(module.DbtCliResource, "_initialize_dbt_core_adapter", build_adapter)
    assert dbt_resource()._initialize_dbt_core_adapter(["build"]) is None
