"""Parsing of the small textual forms users type: ``KEY=VALUE`` pairs and scalars.

One parser serves extractor specs, ``-p`` method parameters, ``-O`` reader options and
``--map`` label mappings, so they all accept and reject the same things.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from emobridge.errors import ConfigError
from emobridge.fileio import loads_json


def parse_scalar(text: str) -> Any:
    """``text`` as JSON when it parses (``3``, ``0.5``, ``true``, ``[1,2]``, ``null``), else
    the stripped string itself."""
    text = text.strip()
    try:
        return loads_json(text)
    except ValueError:
        return text


def parse_pairs(items: Iterable[str], what: str, typed: bool = True) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``.

    ``what`` names the option in errors (``"-p"``); ``typed`` parses each value with
    :func:`parse_scalar`, otherwise values stay strings. A missing ``=``, an empty key or a
    key given twice raises :class:`~emobridge.errors.ConfigError` naming the item.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        if key in out:
            raise ConfigError(f"{what} {item!r}: {key!r} given twice")
        out[key] = parse_scalar(value) if typed else value.strip()
    return out
