"""Registries for pluggable policies (schedulers, routers, ...): a name -> class table and its decorator."""
from __future__ import annotations

from typing import Callable


def registrar(table: dict[str, type]) -> Callable[[str], Callable[[type], type]]:
    """``register = registrar(TABLE)``; ``@register("name")`` adds a class to TABLE and sets ``cls.name``."""
    def register(name: str):
        def deco(cls: type) -> type:
            table[name] = cls
            cls.name = name
            return cls
        return deco
    return register
