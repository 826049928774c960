"""Span columns -> polars frames: the contract's flat span columns and OTLP JSON lines.

OTLP JSON text is assembled with polars string expressions (Rust side), not per-span
Python objects, so a 10M-span day serializes in seconds. Every string that goes into
the JSON is generated here (hex ids, service and member names), so none needs escaping.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cost_attribution.simulator.population import Population
from cost_attribution.simulator.sampling import Samplers
from cost_attribution.simulator.spans import CLIENT, INTERNAL, SERVER, DaySpans

FLAT_COLUMNS = ["trace_id", "span_id", "parent_span_id", "service", "kind", "start_unix_nano",
                "end_unix_nano", "peer_service", "member_id", "sampling_probability"]

_KIND_NAMES = {SERVER: "SERVER", CLIENT: "CLIENT", INTERNAL: "INTERNAL"}
_OTLP_KIND = {name: str(code) for code, name in _KIND_NAMES.items()}  # the codes are OTLP's

_HEX_PAIRS = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2").view(np.uint16)


def hex_bytes(raw: np.ndarray) -> pl.Series:
    """[n, k] uint8 -> n lowercase hex strings of 2k chars."""
    width = raw.shape[1] * 2
    text = _HEX_PAIRS[raw].view(f"S{width}").ravel()
    return pl.Series(text).cast(pl.String)


def hex_u64(values: np.ndarray) -> pl.Series:
    return hex_bytes(values.astype(">u8").view(np.uint8).reshape(-1, 8))


def _lookup(codes: np.ndarray, table: list) -> pl.Series:
    """codes -> table[code]; code -1 -> null."""
    mapping = {i: v for i, v in enumerate(table)}
    return pl.Series(codes.astype(np.int64)).replace_strict(mapping, default=None, return_dtype=pl.String)


def flat_span_frame(spans: DaySpans, rows: np.ndarray, services: tuple[str, ...],
                    samplers: Samplers, population: Population) -> pl.DataFrame:
    trace = spans.trace[rows]
    parent = spans.parent[rows]
    sampler = spans.trace_sampler[trace]
    is_root = parent < 0
    tagged = is_root if spans.trace_untagged is None else is_root & ~spans.trace_untagged[trace]
    member = np.where(tagged, spans.trace_member[trace], -1)
    member_ids = population.member_id_series
    return pl.DataFrame({
        "trace_id": hex_bytes(spans.trace_ids[trace]),
        "span_id": hex_u64(spans.span_id[rows]),
        "parent_span_id": hex_u64(spans.span_id[np.maximum(parent, 0)]),
        "service": _lookup(spans.service[rows], list(services)),
        "kind": pl.Series(spans.kind[rows].astype(np.int64)).replace_strict(_KIND_NAMES, return_dtype=pl.String),
        "start_unix_nano": spans.start[rows],
        "end_unix_nano": spans.end[rows],
        "peer_service": _lookup(spans.peer[rows], list(services)),
        "member_id": member_ids.gather(np.maximum(member, 0)),
        "sampling_probability": samplers.probability[sampler],
        "_is_root": is_root,
        "_has_member": member >= 0,
        "_convention": _lookup(sampler, list(samplers.conventions)),
        "_tracestate": _lookup(sampler, list(samplers.tracestate)),
        "_client_domain": _lookup(sampler, [d or "" for d in samplers.client_domain]),
    }).with_columns(
        parent_span_id=pl.when(pl.col("_is_root")).then(None).otherwise(pl.col("parent_span_id")),
        member_id=pl.when(pl.col("_has_member")).then(pl.col("member_id")).otherwise(None),
    ).drop("_is_root", "_has_member")


def _attr(key: str, value_type: str, value: pl.Expr | str) -> list[pl.Expr]:
    value_expr = pl.lit(value) if isinstance(value, str) else value
    quote = '"' if value_type != "doubleValue" else ""
    return [pl.lit(f'{{"key":"{key}","value":{{"{value_type}":{quote}'), value_expr, pl.lit(f"{quote}}}}}")]


def _span_json() -> pl.Expr:
    service, peer = pl.col("service").fill_null(""), pl.col("peer_service").fill_null("")
    server_attrs = pl.concat_str(
        _attr("http.request.method", "stringValue", "GET") + [pl.lit(",")]
        + _attr("http.route", "stringValue", pl.concat_str([pl.lit("/"), service, pl.lit("/v1")]))
        + [pl.lit(',{"key":"http.response.status_code","value":{"intValue":"200"}}')])
    client_attrs = pl.concat_str(
        _attr("peer.service", "stringValue", peer) + [pl.lit(",")]
        + _attr("server.address", "stringValue", pl.concat_str([peer, pl.lit(".internal")])))
    is_server, is_client = pl.col("kind") == "SERVER", pl.col("kind") == "CLIENT"
    internal_attrs = pl.concat_str(_attr("code.function", "stringValue", "handle"))
    sampling_attr = pl.when(pl.col("_convention") == "attribute").then(pl.concat_str(
        [pl.lit(",")] + _attr("sampling.probability", "doubleValue",
                              pl.col("sampling_probability").cast(pl.String)))).otherwise(pl.lit(""))
    member_attrs = pl.when(pl.col("member_id").is_not_null()).then(pl.concat_str(
        [pl.lit(",")] + _attr("enduser.id", "stringValue", pl.col("member_id")) + [pl.lit(",")]
        + _attr("client.domain", "stringValue", pl.col("_client_domain")))).otherwise(pl.lit(""))
    trace_state = pl.when(pl.col("_tracestate") != "").then(
        pl.concat_str([pl.lit(',"traceState":"'), pl.col("_tracestate"), pl.lit('"')])).otherwise(pl.lit(""))
    name = pl.when(is_server).then(pl.concat_str([pl.lit("GET /"), service, pl.lit("/v1")])).when(is_client).then(
        pl.concat_str([pl.lit("call "), peer])).otherwise(pl.lit("handle"))
    return pl.concat_str([
        pl.lit('{"traceId":"'), pl.col("trace_id"),
        pl.lit('","spanId":"'), pl.col("span_id"),
        pl.lit('","parentSpanId":"'), pl.col("parent_span_id").fill_null(""),
        pl.lit('","name":"'), name,
        pl.lit('","kind":'), pl.col("kind").replace_strict(_OTLP_KIND),
        pl.lit(',"startTimeUnixNano":"'), pl.col("start_unix_nano").cast(pl.String),
        pl.lit('","endTimeUnixNano":"'), pl.col("end_unix_nano").cast(pl.String),
        pl.lit('","attributes":['),
        pl.when(is_server).then(server_attrs).when(is_client).then(client_attrs).otherwise(internal_attrs),
        sampling_attr, member_attrs,
        pl.lit('],"status":{"code":0}'), trace_state, pl.lit("}"),
    ])


def otlp_lines(frame: pl.DataFrame, batch: np.ndarray) -> pl.Series:
    """One ExportTraceServiceRequest JSON line per batch id; spans grouped per service.

    frame must already be ordered by batch then service (group order is kept).
    A null service gives a resource without the service.name attribute.
    """
    service_attr = pl.when(pl.col("service").is_null()).then(pl.lit("")).otherwise(pl.concat_str(
        _attr("service.name", "stringValue", pl.col("service")) + [pl.lit(",")]))
    resources = (
        frame.lazy()
        .with_columns(_batch=pl.Series(batch), _json=_span_json())
        .group_by("_batch", "service", maintain_order=True)
        .agg(pl.col("_json").str.join(","))
        .select("_batch", _resource=pl.concat_str([
            pl.lit('{"resource":{"attributes":['), service_attr,
            pl.lit('{"key":"deployment.environment","value":{"stringValue":"prod"}}]},'
                   '"scopeSpans":[{"scope":{"name":"io.opentelemetry.server","version":"1.0"},"spans":['),
            pl.col("_json"), pl.lit("]}]}")]))
        .group_by("_batch", maintain_order=True)
        .agg(pl.col("_resource").str.join(","))
        .select(pl.concat_str([pl.lit('{"resourceSpans":['), pl.col("_resource"), pl.lit("]}")]).alias("line"))
        .collect()
    )
    return resources["line"]
