"""Common base for specs: strict pydantic models whose validation errors become SpecError."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from simfoe.errors import SpecError


class Spec(BaseModel):
    """Strict spec model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def validate_spec(cls: type[Spec], data: Any, root: str) -> Spec:
    """Build ``cls`` from ``data``; the first validation error becomes a one-line SpecError."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        field = f"{root}.{loc}" if loc else root
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = cls
            allowed = "unknown key"
            try:
                for p in err["loc"][:-1]:
                    ann = parent.model_fields[str(p)].annotation
                    parent = next(a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel))
                allowed = "allowed keys: " + ", ".join(parent.model_fields)
            except Exception:  # noqa: BLE001 - best effort listing
                pass
            raise SpecError(field, err.get("input"), allowed) from None
        raise SpecError(field, err.get("input"), msg) from None
