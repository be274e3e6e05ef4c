"""One small generic registry: name -> entry, with tags and a clear error on unknown or duplicate names.

Entries may be lazy: a ``"module:attribute"`` string is imported only when ``load`` is called, so
listing (``cli.py tasks list``, ``methods list``) never imports torch or a simulator.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from harness.errors import HarnessError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def import_target(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise HarnessError(f"bad import target {target!r}; expected 'package.module:attribute'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise HarnessError(f"{module_name} has no attribute {attr!r} (import target {target!r})") from exc


class Registry(Generic[T]):
    """A named collection. ``kind`` appears in error messages ("unknown method 'x'; valid: ...")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, value: T | None = None, *, description: str = "",
                 tags: tuple[str, ...] = (), replace: bool = False) -> Any:
        """Register ``value`` under ``name``; without ``value`` this is a decorator."""
        if value is None:
            def decorator(obj: T) -> T:
                self.register(name, obj, description=description, tags=tags, replace=replace)
                return obj
            return decorator
        if not name or not isinstance(name, str):
            raise HarnessError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise HarnessError(f"duplicate {self.kind} {name!r}: it is already registered")
        self._entries[name] = Entry(name, value, description, tuple(tags))
        return value

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(names) if len(names) <= 60 else ", ".join(names[:60]) + f", ... ({len(names)} in all)"
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {shown}"

    def get(self, name: str) -> T:
        return self.entry(name).value

    def load(self, name: str) -> Any:
        """The entry's value, importing it first when it is a lazy ``"module:attr"`` string."""
        value = self.get(name)
        return import_target(value) if isinstance(value, str) else value

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def with_tag(self, tag: str) -> list[Entry[T]]:
        return [e for e in self._entries.values() if tag in e.tags]


def lazy(target: str) -> Callable[..., Any]:
    """A callable that imports ``target`` on first call and forwards to it."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return import_target(target)(*args, **kwargs)
    call.__qualname__ = f"lazy({target})"
    return call
