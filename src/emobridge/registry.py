"""A registry of classes by their ``name`` attribute: the one mechanism behind the corpus
readers, feature extractors and adaptation methods that ``@register``-style decorators add.
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from emobridge.errors import UnknownNameError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes keyed by ``cls.name``.

    ``kind`` names the entries in errors (``"corpus reader"``); ``builtins`` is the module
    whose import registers the built-in classes, imported lazily on the first listing so the
    modules that define the contract do not import every implementation at start-up.
    """

    def __init__(self, kind: str, builtins: str) -> None:
        self.kind = kind
        self.builtins = builtins
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator adding ``cls`` under ``cls.name``; a second class of the same name
        raises ``ValueError``."""
        name = cls.name  # type: ignore[attr-defined]
        if name in self._classes:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._classes[name] = cls
        return cls

    def available(self) -> dict[str, T]:
        """The registered classes by name, sorted, after importing the built-ins."""
        importlib.import_module(self.builtins)
        return dict(sorted(self._classes.items()))

    def get(self, name: object) -> T:
        """The class registered as ``name``; otherwise :class:`UnknownNameError` listing the
        known names."""
        classes = self.available()
        if not isinstance(name, str) or name not in classes:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(classes)}")
        return classes[name]
