"""Registry: name -> plug-in, one instance per kind (models, activations, methods, attacks, datasets).

Plug-ins register themselves where they are defined (``@ATTACKS.register("pgd")``), so a new entry is
covered by the parametrized contract tests the moment its module is imported.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable[[Any], Any] | Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: Any) -> Any:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name_or_obj: Any) -> Any:
        """Look a name up (a non-string passes through, timm's ``get_act_layer`` habit)."""
        if not isinstance(name_or_obj, str):
            return name_or_obj
        try:
            return self._items[name_or_obj]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name_or_obj}'; known: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


MODELS = Registry("model")
ACTIVATIONS = Registry("activation")
METHODS = Registry("method")
ATTACKS = Registry("attack")
DATASETS = Registry("dataset")
