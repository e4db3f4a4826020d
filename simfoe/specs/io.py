"""Spec I/O: presets by short name or YAML path, YAML dump, and ``--set`` dotted-path overrides.

``--set`` paths start at a root (``hardware``, ``model``, ``placement``) and walk the spec's
fields, e.g. ``hardware.network.nic_bandwidth=100e9`` or ``placement.foe.clusters=4``. The path
must name an existing field; the value is parsed as int, float, bool, null, list, or kept a string.
"""
from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from simfoe.errors import SpecError, plain
from simfoe.paths import hardware_presets, hwprofiles_dir
from simfoe.specs.base import Spec, validate_spec
from simfoe.specs.hardware import HardwareSpec
from simfoe.specs.model import ModelSpec
from simfoe.specs.placement import PlacementSpec

ROOTS = ("hardware", "model", "placement")


def _preset_dir(kind: str):
    if kind == "hardware":
        return hwprofiles_dir()
    return resources.files("simfoe.specs") / "models"


def list_presets(kind: str) -> list[str]:
    """Short names of the bundled presets of ``kind`` ('hardware' or 'model')."""
    if kind == "hardware":
        return hardware_presets()
    return sorted(p.name[:-5] for p in _preset_dir(kind).iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path, field: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(field, str(path), "no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(field, str(path), f"must be valid YAML{where}") from None
    if not isinstance(data, dict):
        raise SpecError(field, str(path), "must be a YAML mapping")
    return data


def load_raw(kind: str, name_or_path: str | Path | dict) -> dict:
    """The raw mapping of a preset (short name) or YAML file, before validation."""
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path)
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s:
        return read_yaml(s, kind)
    f = _preset_dir(kind) / f"{s}.yaml"
    if not f.is_file():
        raise SpecError(kind, s, "allowed: " + ", ".join(list_presets(kind)) + ", or a YAML path")
    return yaml.safe_load(f.read_text())


def load_hardware(name_or_path, overrides: list[str] | None = None) -> HardwareSpec:
    raw = load_raw("hardware", name_or_path)
    return _with_overrides(HardwareSpec, raw, "hardware", overrides)


def load_model(name_or_path, overrides: list[str] | None = None) -> ModelSpec:
    raw = load_raw("model", name_or_path)
    return _with_overrides(ModelSpec, raw, "model", overrides)


def parse_value(text: str) -> Any:
    """Parse a --set value: int, float (incl. 100e9), bool, null, YAML list/dict, else string."""
    t = text.strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() in ("null", "none", "~"):
        return None
    if t[:1] in "[{":
        try:
            return yaml.safe_load(t)
        except yaml.YAMLError:
            raise SpecError("--set", text, "a valid YAML list or mapping") from None
    return t


def split_assignment(item: str, example: str = "hardware.network.nic_bandwidth=100e9") -> tuple[str, Any]:
    """'a.b=v' -> ('a.b', parsed v); ``example`` is shown when the ``=`` is missing."""
    if "=" not in item:
        raise SpecError("--set", item, f"form PATH=VALUE, e.g. {example}")
    path, value = item.split("=", 1)
    return path.strip(), parse_value(value)


def split_override(item: str) -> tuple[str, str, Any]:
    """'root.a.b=v' -> (root, 'a.b', parsed v)."""
    path, value = split_assignment(item)
    root, _, rest = path.partition(".")
    if root not in ROOTS or not rest:
        raise SpecError("--set", path, "a dotted path starting with " + ", ".join(ROOTS))
    return root, rest, value


def set_path(data: dict, path: str, value: Any, root: str, cls: type[Spec]) -> None:
    """Set ``data[a][b]... = value`` where each step must be a field of the spec (or a dict key).

    A field holding a list of named mappings (a pipeline's ``stages``) is stepped into by name:
    ``stages.bm25.instances``. ``root`` prefixes the field named in errors (may be empty).
    """
    keys = path.split(".")
    node: Any = data
    model_cls: Any = cls
    for i, k in enumerate(keys):
        here = ".".join(x for x in (root, *keys[: i + 1]) if x)
        last = i == len(keys) - 1
        if isinstance(node, list):
            node = _named_item(node, k, ".".join(x for x in (root, *keys[:i]) if x), value, last)
            continue
        fields = getattr(model_cls, "model_fields", None)
        if fields is not None and k not in fields:
            raise SpecError(".".join(x for x in (root, *keys[:i]) if x) or "--set", k,
                            "unknown field; allowed: " + ", ".join(fields))
        if last:
            node[k] = value
            return
        if fields is not None:
            ann = fields[k].annotation
            sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, Spec)), None)
            model_cls = sub
        else:
            model_cls = None
        nxt = node.get(k) if isinstance(node, dict) else None
        if nxt is None:
            if model_cls is None and not isinstance(node, dict):
                raise SpecError(here, None, "set the field itself, not a key inside it",
                                problem="is inside a field that is not a mapping")
            nxt = {}
            node[k] = nxt
        if not isinstance(nxt, (dict, list)) or (isinstance(nxt, list) and model_cls is None):
            raise SpecError(here, nxt, f"set {here}=VALUE itself", problem=f"holds {plain(nxt)!r}, not a mapping of fields")
        node = nxt


def _named_item(items: list, name: str, parent: str, value: Any, last: bool) -> dict:
    """The mapping of ``items`` (the list at ``parent``) whose ``name`` is ``name`` (a --set step
    into a list of named specs)."""
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if name not in names:
        raise SpecError(parent, name, "a name in the list: " + ", ".join(map(str, names)))
    if last:
        raise SpecError(f"{parent}.{name}", value, f"{parent}.{name}.FIELD=VALUE",
                        problem="names a whole list item")
    return items[names.index(name)]


def _with_overrides(cls: type[Spec], raw: dict, root: str, overrides: list[str] | None) -> Any:
    base = validate_spec(cls, raw, root)
    if not overrides:
        return base
    data = base.model_dump()
    touched = False
    for item in overrides:
        r, path, value = split_override(item)
        if r != root:
            continue
        set_path(data, path, value, root, cls)
        touched = True
    return validate_spec(cls, data, root) if touched else base


def build_placement(arch: str, nodes: int, overrides: list[str] | None = None, **extra) -> PlacementSpec:
    """PlacementSpec from CLI options plus ``placement.*`` overrides."""
    data = {"arch": arch, "nodes": nodes, **extra}
    base = validate_spec(PlacementSpec, data, "placement")
    return _with_overrides(PlacementSpec, base.model_dump(), "placement", overrides)


def check_override_roots(overrides: list[str] | None) -> None:
    """Every override is ``root.path=value`` with a known root, and a number value is finite
    (inf gets past the specs' own checks)."""
    for item in overrides or []:
        _, _, value = split_override(item)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError("--set", item, "a finite number as the value")


def dump_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec.model_dump(exclude_none=True), sort_keys=False)
