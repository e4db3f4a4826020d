"""Errors that users see.

``SpecError`` is raised for bad input anywhere in simfoe. The CLI turns it into one line
``error: <field>: <value!r> is not allowed; <allowed>`` on stderr and exit code 2; where a value
cannot be shown (a missing option, a flag that takes none), ``problem`` words the middle part:
``error: <field>: <problem>; <allowed>``.
"""
from __future__ import annotations


def plain(value: object) -> object:
    """``value`` as users typed it: numpy scalars become Python numbers (no ``np.int64(...)`` reprs),
    paths become strings."""
    mod = type(value).__module__
    if mod == "numpy" and hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):  # pragma: no cover - arrays
            return value
    if mod.startswith("pathlib"):
        return str(value)
    return value


class SpecError(ValueError):
    """Bad user input: names the field, the value given and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str, *, problem: str | None = None):
        value = plain(value)
        self.field = field
        self.value = value
        self.allowed = allowed
        self.problem = problem
        super().__init__(f"{field}: {problem or f'{value!r} is not allowed'}; {allowed}")
