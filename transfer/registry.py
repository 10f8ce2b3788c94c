"""A name -> object registry, filled by ``@REG.register("name")`` and by Python entry points.

Plug-ins (tasks, stage-1 methods) are found through the entry-point group a
registry is given (``importlib.metadata``), so another installed package can
add one without this package importing it, or even knowing its name. An
unknown name lists the valid ones.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from transfer.errors import MedTransferError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """``@REG.register("name")`` on a class or factory; ``REG.get("name")`` to look it up."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.group = entry_point_group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self._add(name, obj, "register")
            return obj

        return deco

    def _add(self, name: str, obj: T, source: str) -> None:
        if name in self._items and self._items[name] is not obj:
            raise MedTransferError(f"{self.kind} {name!r} registered twice ({source} and {self._items[name]!r})")
        self._items[name] = obj

    def load_entry_points(self) -> None:
        """Import every plug-in declared under this registry's entry-point group (cheap when already loaded)."""
        if self.group is None:
            return
        for ep in entry_points(group=self.group):
            if ep.name not in self._items:
                try:
                    obj = ep.load()
                except Exception as e:  # a broken third-party plug-in must name itself, not end in a traceback
                    raise UnknownNameError(f"{self.kind} {ep.name!r} (entry point {ep.value} in group {self.group}) "
                                           f"failed to load: {type(e).__name__}: {e}") from e
                self._add(ep.name, obj, f"entry point {ep.value}")

    def get(self, name: str) -> T:
        if name not in self._items:
            self.load_entry_points()
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names()) or '(none registered)'}")
        return self._items[name]

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()
