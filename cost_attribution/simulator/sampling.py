"""Head samplers: client domains plus the own sampler of each broken edge's callee.

A sampler fixes the probability p of keeping a trace and how p is written into spans.
For the OTEP 235 convention the written threshold is the truth: p = 1 - T / 2^56.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cost_attribution.simulator.config import WorldConfig

THRESHOLD_SCALE = 2**56


def otep235_threshold_hex(probability: float) -> str:
    """Rejection threshold T = (1 - p) 2^56 as 14 hex digits, trailing zeros removed."""
    threshold = round((1.0 - probability) * THRESHOLD_SCALE)
    digits = f"{threshold:014x}".rstrip("0")
    return digits or "0"


def probability_from_threshold_hex(digits: str) -> float:
    return 1.0 - int(digits.ljust(14, "0"), 16) / THRESHOLD_SCALE


@dataclass(frozen=True)
class Samplers:
    names: tuple[str, ...]
    conventions: tuple[str, ...]  # attribute | tracestate | none
    probability: np.ndarray  # effective p, exactly what a reader recovers from the span
    tracestate: tuple[str, ...]  # "" unless convention == tracestate
    client_domain: tuple[str | None, ...]  # None for anonymous (broken-edge) samplers
    broken_edge_sampler: dict[tuple[str, str], int]  # (caller, callee) -> sampler index


def build_samplers(config: WorldConfig) -> Samplers:
    names, conventions, probs, states, domains = [], [], [], [], []

    def add(name: str, p: float, convention: str, domain: str | None) -> int:
        if convention == "tracestate":
            digits = otep235_threshold_hex(p)
            states.append(f"ot=th:{digits}")
            p = probability_from_threshold_hex(digits)
        else:
            states.append("")
        if convention == "none" and p != 1.0:
            raise ValueError(f"sampler {name}: convention 'none' means p = 1, got {p}")
        names.append(name)
        conventions.append(convention)
        probs.append(p)
        domains.append(domain)
        return len(names) - 1

    for domain in config.sampling_domains:
        add(domain.name, domain.probability, domain.convention, domain.name)
    broken = {}
    for caller, callee in config.broken_edges:
        broken[(caller, callee)] = add(
            f"{callee}-own-sampler", config.broken_callee_sampling_probability, "attribute", None)
    return Samplers(tuple(names), tuple(conventions), np.array(probs), tuple(states),
                    tuple(domains), broken)
