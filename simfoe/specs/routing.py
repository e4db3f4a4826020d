"""Routing spec: which distribution token-to-expert choices are drawn from.

Syntax (CLI ``--routing``): ``uniform`` | ``zipf:S`` (S > 0) | ``dirichlet:ALPHA`` (per layer,
ALPHA > 0) | ``hotset:FRACTION:SHARE`` (FRACTION of experts receive SHARE of the probability mass,
fixed across steps) | ``trace:PATH`` (a .npy/.csv of per-expert counts or probabilities, one row
per layer).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from simfoe.errors import SpecError
from simfoe.specs.base import Spec

ALLOWED = "uniform | zipf:S | dirichlet:ALPHA | hotset:FRACTION:SHARE | trace:PATH"


class RoutingSpec(Spec):
    kind: Literal["uniform", "zipf", "dirichlet", "hotset", "trace"] = "uniform"
    s: float = Field(1.0, gt=0, description="zipf exponent")
    alpha: float = Field(1.0, gt=0, description="dirichlet concentration")
    hot_fraction: float = Field(0.125, gt=0, le=1)
    hot_share: float = Field(0.5, gt=0, le=1)
    path: str | None = None

    def __str__(self) -> str:
        return {
            "uniform": "uniform",
            "zipf": f"zipf:{self.s:g}",
            "dirichlet": f"dirichlet:{self.alpha:g}",
            "hotset": f"hotset:{self.hot_fraction:g}:{self.hot_share:g}",
            "trace": f"trace:{self.path}",
        }[self.kind]


def parse_routing(text: str | RoutingSpec | None) -> RoutingSpec:
    """Parse the ``--routing`` string; SpecError (field ``routing``) on bad input."""
    if text is None:
        return RoutingSpec()
    if isinstance(text, RoutingSpec):
        return text
    parts = str(text).strip().split(":")
    kind = parts[0].lower()
    try:
        if kind == "uniform" and len(parts) == 1:
            return RoutingSpec(kind="uniform")
        if kind == "zipf" and len(parts) == 2:
            return RoutingSpec(kind="zipf", s=float(parts[1]))
        if kind == "dirichlet" and len(parts) == 2:
            return RoutingSpec(kind="dirichlet", alpha=float(parts[1]))
        if kind in ("hotset", "hot-set") and len(parts) in (1, 3):
            if len(parts) == 1:
                return RoutingSpec(kind="hotset")
            return RoutingSpec(kind="hotset", hot_fraction=float(parts[1]), hot_share=float(parts[2]))
        if kind == "trace" and len(parts) >= 2:
            return RoutingSpec(kind="trace", path=":".join(parts[1:]))
    except (ValueError, TypeError):
        pass
    raise SpecError("routing", text, f"allowed: {ALLOWED} (numbers > 0; fractions in (0, 1])")
