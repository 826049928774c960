"""experiments.yaml and services.yaml: typed schemas with errors that name the line.

Each entry is validated by a pydantic model (unknown keys, booleans, dates, numbers,
cell names); the YAML node tree gives every entry's and every field's line, so an
error reads `experiments.yaml line 12: experiment 'exp-a': start: ...`. A catalog is
all-or-nothing: a silently skipped experiment would be a silently missing cost.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_ERRORS_SHOWN = 20


class CatalogError(ValueError):
    """A catalog that cannot be used as written; the message lists file, line, value and fix."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)


NonEmpty = Annotated[str, Field(min_length=1)]


def _as_date(value: Any) -> Any:
    """A timestamp where a date belongs ("2026-10-30T00:00:00Z") counts as its date."""
    if isinstance(value, str) and len(value) > 10 and value[10] in "T ":
        return value[:10]
    return value


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay text until the schema parses them, so
    `2026-02-30` is a line-numbered error rather than a crash inside the YAML parser."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class Shipped(_Entry):
    cell: NonEmpty
    date: dt.date

    _date = field_validator("date", mode="before")(_as_date)


class ExperimentEntry(_Entry):
    id: NonEmpty
    name: str | None = None
    control_cell: NonEmpty = "control"
    cells: list[NonEmpty] | None = Field(default=None, min_length=2)
    start: dt.date | None = None
    owner: str | None = None
    # The intended split, one non-negative number per cell (a 0 cell expects no members).
    weights: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    kind: Literal["ab", "aa"] = "ab"
    shipped: Shipped | None = None

    _start = field_validator("start", mode="before")(_as_date)

    @field_validator("cells")
    @classmethod
    def _cell_names(cls, cells: list[str] | None) -> list[str] | None:
        if cells is None:
            return None
        with_comma = [c for c in cells if "," in c]
        if with_comma:
            raise ValueError(f"cell names may not contain a comma: {with_comma} (rename the cells, "
                             "e.g. 'a_b' instead of 'a,b', here and in allocations)")
        repeated = sorted({c for c in cells if cells.count(c) > 1})
        if repeated:
            raise ValueError(f"cells listed more than once: {repeated}")
        return cells

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentEntry:
        if "," in self.control_cell:
            raise ValueError(f"control_cell {self.control_cell!r} may not contain a comma")
        cells = self.all_cells()
        if self.control_cell not in cells:
            raise ValueError(f"control_cell {self.control_cell!r} is not one of its cells {cells}")
        if self.weights is not None and len(self.weights) != len(cells):
            raise ValueError(f"weights has {len(self.weights)} numbers for {len(cells)} cells {cells}: give one per cell")
        if self.weights is not None and not sum(self.weights) > 0:
            raise ValueError(f"weights {self.weights} must have a positive sum")
        if self.shipped is not None and self.shipped.cell not in cells:
            raise ValueError(f"shipped.cell {self.shipped.cell!r} is not one of its cells {cells}")
        if self.shipped is not None and self.shipped.cell == self.control_cell:
            treatments = [c for c in cells if c != self.control_cell]
            raise ValueError(f"shipped.cell {self.shipped.cell!r} is the control cell, not one of its treatment cells "
                             f"{treatments}: name the treatment cell that went to 100%")
        return self

    def all_cells(self) -> list[str]:
        return self.cells or [self.control_cell, "treatment"]


class ServiceEntry(_Entry):
    name: NonEmpty
    owner: str | None = None
    # Lax pydantic booleans: true/false, yes/no, on/off, 1/0 (any case), so the string
    # "false" is False; anything else is an error, never "truthy".
    deprecated: bool = False
    tier: Annotated[int, Field(ge=0)] | None = None


def _node_lines(text: str, top_key: str) -> list[tuple[int, dict[str, int]]]:
    """(line of each entry, {field: line}) under `top_key`, 1-based."""
    root = yaml.compose(text, Loader=_Loader)
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == top_key and isinstance(value, yaml.SequenceNode):
            return [
                (item.start_mark.line + 1,
                 {k.value: k.start_mark.line + 1 for k, _ in item.value} if isinstance(item, yaml.MappingNode) else {})
                for item in value.value
            ]
    return []


def _load(text: str, top_key: str, source: str) -> list[Any]:
    try:
        loaded = yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"{source}{where}: not valid YAML: {getattr(error, 'problem', error)}. "
                           "Fix: correct the YAML syntax (indentation, quotes, colons).") from None
    if not isinstance(loaded, dict) or top_key not in loaded:
        raise CatalogError(f"{source}: expected a mapping with a `{top_key}:` list at the top level, got "
                           f"{type(loaded).__name__ if not isinstance(loaded, dict) else sorted(loaded)}. "
                           f"Fix: start the file with `{top_key}:` (docs/contract.md).")
    unknown = sorted(set(loaded) - {top_key})
    if unknown:
        raise CatalogError(f"{source}: unknown top-level keys {unknown}. Fix: keep only `{top_key}:`.")
    entries = loaded[top_key] or []
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: `{top_key}:` must be a list of entries, got {type(entries).__name__}.")
    return entries


def _message(error: dict, entry: Any) -> tuple[str, str]:
    """(field path, 'problem (value ...)') for one pydantic error."""
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return loc, f"unknown key (value {error['input']!r})"
    value = error.get("input")
    shown = "" if isinstance(value, dict) and value is entry else f" (value {value!r})"
    return loc, f"{error['msg'].removeprefix('Value error, ')}{shown}"


def _validate(text: str, top_key: str, model: type[_Entry], label: str, id_field: str, source: str) -> list[_Entry]:
    entries = _load(text, top_key, source)
    lines = _node_lines(text, top_key)
    errors, parsed, first_line = [], [], {}
    allowed = ", ".join(model.model_fields)
    for index, entry in enumerate(entries):
        line, field_lines = lines[index] if index < len(lines) else (None, {})
        where = f"{source} line {line}" if line else f"{source} entry {index + 1}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected a mapping of {allowed}, got {entry!r}")
            continue
        name = f"{label} {entry.get(id_field)!r}" if entry.get(id_field) is not None else f"{label} #{index + 1}"
        try:
            item = model.model_validate(entry)
        except ValidationError as error:
            for detail in error.errors():
                loc, problem = _message(detail, entry)
                field_line = field_lines.get(str(detail["loc"][0])) if detail["loc"] else None
                at = f"{source} line {field_line}" if field_line else where
                errors.append(f"{at}: {name}: {loc or 'entry'}: {problem}")
            continue
        key = getattr(item, id_field)
        if key in first_line:
            errors.append(f"{where}: {name} is listed again (first at {first_line[key]}); each {id_field} once")
            continue
        first_line[key] = f"line {line}" if line else f"entry {index + 1}"
        parsed.append(item)
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN] + ([f"... and {len(errors) - MAX_ERRORS_SHOWN} more"] if len(errors) > MAX_ERRORS_SHOWN else [])
        raise CatalogError(f"{source} cannot be used ({len(errors)} problem{'s' if len(errors) > 1 else ''}; "
                           f"allowed keys: {allowed}; docs/contract.md):\n  " + "\n  ".join(shown))
    return parsed


def _text(catalog: str | dict) -> str:
    return catalog if isinstance(catalog, str) else yaml.safe_dump(catalog, sort_keys=False)


EXPERIMENT_SCHEMA = {
    "experiment_id": pl.Utf8,
    "name": pl.Utf8,
    "control_cell": pl.Utf8,
    "cells": pl.Utf8,  # comma-separated (cell names cannot hold a comma): portable to every SQL engine
    "start_date": pl.Date,
    "owner": pl.Utf8,
    "weights": pl.Utf8,  # JSON list aligned with `cells`, normalized to sum 1; NULL = even split
    "kind": pl.Utf8,  # 'ab' | 'aa' (calibration: no effect expected)
    "shipped_cell": pl.Utf8,
    "shipped_date": pl.Date,
}


def parse_experiments(catalog: str | dict, source: str = "experiments.yaml") -> pl.DataFrame:
    """experiments.yaml (text, or an already loaded mapping) -> one row per experiment."""
    rows = []
    for exp in _validate(_text(catalog), "experiments", ExperimentEntry, "experiment", "id", source):
        cells = exp.all_cells()
        weights = None
        if exp.weights is not None:
            total = sum(exp.weights)
            weights = json.dumps([w / total for w in exp.weights])
        rows.append({
            "experiment_id": exp.id,
            "name": exp.name or exp.id,
            "control_cell": exp.control_cell,
            "cells": ",".join(cells),
            "start_date": exp.start,
            "owner": exp.owner,
            "weights": weights,
            "kind": exp.kind,
            "shipped_cell": exp.shipped.cell if exp.shipped else None,
            "shipped_date": exp.shipped.date if exp.shipped else None,
        })
    return pl.DataFrame(rows, schema=EXPERIMENT_SCHEMA)


SERVICE_SCHEMA = {"service": pl.Utf8, "owner": pl.Utf8, "deprecated": pl.Boolean, "tier": pl.Int64}


def parse_services(catalog: str | dict, source: str = "services.yaml") -> pl.DataFrame:
    """services.yaml (text, or an already loaded mapping) -> one row per service."""
    rows = [
        {"service": svc.name, "owner": svc.owner, "deprecated": svc.deprecated, "tier": svc.tier}
        for svc in _validate(_text(catalog), "services", ServiceEntry, "service", "name", source)
    ]
    return pl.DataFrame(rows, schema=SERVICE_SCHEMA)
