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
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from ledger.core.canonical import JsonValue, parse_instant, to_json_value

T = TypeVar("T")


_OMIT_DEFAULT = "accrual_omit_default"


def added_field(default: Any) -> Any:
    """A field added to a shipped dataclass: left out of the encoded form while it
    holds its default, so everything stored before it existed (and its content
    hash) encodes exactly as it did."""
    return dataclasses.field(default=default, metadata={_OMIT_DEFAULT: True})


def encode(instance: Any) -> dict[str, JsonValue]:
    """A dataclass instance as a JSON-ready dict (canonical value forms)."""
    assert dataclasses.is_dataclass(instance) and not isinstance(instance, type)
    encoded: dict[str, JsonValue] = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if field.metadata.get(_OMIT_DEFAULT) and value == field.default:
            continue
        encoded[field.name] = _encode_value(value)
    return encoded


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
    fields = _field_decoders(cls)
    return cls(**{name: convert(data[name]) for name, convert in fields if name in data})


Decoder = Callable[[Any], Any]
_FIELDS: dict[type[Any], list[tuple[str, Decoder]]] = {}
_DECODERS: dict[Any, Decoder] = {}


def _field_decoders(cls: type[Any]) -> list[tuple[str, Decoder]]:
    """A decoder per field, built once per class from its type hints.

    Decoding is on the hot path of every projection and replay, so the type
    inspection happens once, not per value.
    """
    if cls not in _FIELDS:
        names = {field.name for field in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = [(name, _decoder(hint)) for name, hint in hints.items() if name in names]
    return _FIELDS[cls]


def _decoder(hint: Any) -> Decoder:
    if hint not in _DECODERS:
        _DECODERS[hint] = _build_decoder(hint)
    return _DECODERS[hint]


def _identity(raw: Any) -> Any:
    return raw


def _build_decoder(hint: Any) -> Decoder:  # noqa: PLR0911 - one branch per shape
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in args if arg is not type(None)]
        value = _decoder(inner)
        return lambda raw: None if raw is None else value(raw)
    if origin is tuple:
        item = _decoder(args[0])
        return lambda raw: tuple(item(x) for x in raw)
    if origin in (Mapping, dict):
        value = _decoder(args[1])
        return lambda raw: {key: value(x) for key, x in raw.items()}
    if dataclasses.is_dataclass(hint):
        cls = typing.cast(type[Any], hint)
        return lambda raw: decode(cls, raw)
    if hint is Decimal:
        return Decimal
    if hint is datetime:
        return parse_instant
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    return _identity
