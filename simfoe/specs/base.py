"""Common base for specs: strict pydantic models whose validation errors become SpecError."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from simfoe.errors import SpecError


class Spec(BaseModel):
    """Strict spec model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def validate_spec(cls: type[Spec], data: Any, root: str) -> Spec:
    """Build ``cls`` from ``data``; the first validation error becomes a one-line SpecError.

    The error's field is ``root`` (may be empty) and the dotted location; an item of a list of
    named mappings (``stages: [{name: a, ...}]``) is named by its ``name``, as ``--set`` addresses it.
    A SpecError raised by a validator (a field's own parser, a cross-field check) keeps its field,
    placed under the location it was raised at.
    """
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _named_loc(err["loc"], data)
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, SpecError):
            if loc and inner.field.split(".")[0] == loc[-1]:
                loc = loc[:-1]
            raise SpecError(_dotted(root, *loc, inner.field), inner.value, inner.allowed,
                            problem=inner.problem) from None
        field = _dotted(root, *loc)
        msg = err["msg"]
        if err["type"] == "missing":
            raise SpecError(field, None, "required") from None
        if err["type"] == "extra_forbidden":
            parent = cls
            allowed = "unknown key"
            try:
                for p in err["loc"][:-1]:
                    if isinstance(p, int):
                        continue
                    ann = parent.model_fields[str(p)].annotation
                    parent = next(a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel))
                allowed = "allowed keys: " + ", ".join(parent.model_fields)
            except Exception:  # noqa: BLE001 - best effort listing
                pass
            raise SpecError(field, err.get("input"), allowed) from None
        raise SpecError(field, err.get("input"), msg) from None


def _dotted(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _named_loc(loc: tuple, data: Any) -> list[str]:
    """``loc`` as strings, a list index replaced by the ``name`` of the mapping it points at."""
    out, node = [], data
    for p in loc:
        if isinstance(p, str) and p.startswith("function-"):
            continue
        if isinstance(p, int) and isinstance(node, (list, tuple)) and 0 <= p < len(node):
            node = node[p]
            name = node.get("name") if isinstance(node, dict) else None
            out.append(name if isinstance(name, str) and name else str(p))
            continue
        node = node.get(p) if isinstance(node, dict) else None
        out.append(str(p))
    return out
