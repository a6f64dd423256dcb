"""Encode frozen dataclasses to plain JSON values and back, driven by type hints.

Events and invoices are frozen dataclasses made of ``str``, ``int``, ``bool``,
``Decimal``, aware ``datetime``, enums, ``tuple[...]``, ``Mapping[str, str]``,
optional values and nested dataclasses. One generic codec keeps their stored
form and their Python form in step without per-class code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from ledger.core.canonical import JsonValue, parse_instant, to_json_value

T = TypeVar("T")


def encode(instance: Any) -> dict[str, JsonValue]:
    """A dataclass instance as a JSON-ready dict (canonical value forms)."""
    assert dataclasses.is_dataclass(instance) and not isinstance(instance, type)
    return {
        field.name: _encode_value(getattr(instance, field.name))
        for field in dataclasses.fields(instance)
    }


def _encode_value(value: Any) -> JsonValue:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, tuple | list):
        return [_encode_value(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _encode_value(item) for key, item in value.items()}
    return to_json_value(value)


def decode(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a dataclass of type ``cls`` from :func:`encode` output."""
    hints = _hints(cls)
    kwargs = {name: _decode_value(hint, data[name]) for name, hint in hints.items() if name in data}
    return cls(**kwargs)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """Field type hints of a dataclass, resolved once per class."""
    if cls not in _HINTS:
        names = {field.name for field in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {name: hint for name, hint in hints.items() if name in names}
    return _HINTS[cls]


def _decode_value(hint: Any, raw: Any) -> Any:  # noqa: PLR0911 - one branch per shape
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _decode_value(inner, raw)
    if origin is tuple:
        return tuple(_decode_value(args[0], item) for item in raw)
    if origin in (Mapping, dict):
        return {key: _decode_value(args[1], item) for key, item in raw.items()}
    if dataclasses.is_dataclass(hint):
        return decode(typing.cast(type[Any], hint), raw)
    if hint is Decimal:
        return Decimal(raw)
    if hint is datetime:
        return parse_instant(raw)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(raw)
    return raw
