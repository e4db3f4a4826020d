"""Errors that users see.

``SpecError`` is raised for bad input anywhere in simfoe. The CLI turns it into one line
``error: <field>: <value!r> is not allowed; <allowed>`` on stderr and exit code 2; where a value
cannot be shown (a flag that takes none, two options that clash), ``problem`` words the middle part:
``error: <field>: <problem>; <allowed>``. A value of None means the field was not given:
``error: <field>: not given; <allowed>`` unless ``problem`` says otherwise.
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


_MESSAGE = object()


class SpecError(ValueError):
    """Bad user input: names the field, the value given and what is allowed."""

    def __init__(self, field: str, value: object = _MESSAGE, allowed: str = "", *, problem: str | None = None):
        if value is _MESSAGE:  # rebuilt from its message: SimPy re-raises a process's error as type(e)(*e.args)
            self.field, self.value, self.allowed, self.problem = field.split(":", 1)[0], None, allowed, None
            super().__init__(field)
            return
        value = plain(value)
        self.field = field
        self.value = value
        self.allowed = allowed
        self.problem = problem
        what = problem or ("not given" if value is None else f"{value!r} is not allowed")
        super().__init__(f"{field}: {what}; {allowed}")


class MissingExtra(SpecError):
    """An option needs an optional dependency (a pip extra of simfoe) that is not installed."""

    def __init__(self, field: str, value: object, extra: str, module: str):
        shown = "" if value is None else f"{plain(value)!r} "
        super().__init__(field, value, f"pip install -e .[{extra}] ({module} is not installed)",
                         problem=f"{shown}needs the {extra} extra")


def require_extra(module: str, extra: str, field: str, value: object = None):
    """Import and return ``module``; raise :class:`MissingExtra` (one line, exit 2 in the CLI) naming
    ``field`` (``value``) and the pip extra when it cannot be imported."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(field, value, extra, module) from None
