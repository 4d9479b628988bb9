"""Training configuration as data: nested dataclasses read from YAML, with ``key.sub=value`` overrides.

Every trainer describes its whole run with one dataclass tree; a YAML file fills it (typed by dacite),
command-line overrides change single values, and the resolved tree is written next to the run's outputs.
Unknown keys and values of the wrong type are refused with the dotted key that is wrong.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import dacite
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit the configuration's dataclasses."""


class _Refused:
    """A YAML value that Python's types would let through but the configuration does not (``true`` as a number)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _to_float(value: Any) -> Any:
    if isinstance(value, bool):
        return _Refused(value)
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return float(value) if isinstance(value, int) else value


def _to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return _Refused(value)
    return str(value) if isinstance(value, (int, float)) else value


#: dacite's conversions: lists become tuples where a tuple is declared, and the YAML quirks above.
_DACITE = dacite.Config(
    strict=True,
    cast=[tuple],
    type_hooks={
        float: _to_float,
        int: lambda value: _Refused(value) if isinstance(value, bool) else value,
        str: _to_str,
    },
)
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(hint: Any) -> str:
    """``hint`` as the error messages name it: "an integer", "a number or null", "a list"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        names = " or ".join(_describe(a) for a in options)
        return f"{names} or null" if len(options) < len(typing.get_args(hint)) else names
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return _EXPECTED.get(hint, getattr(hint, "__name__", str(hint)))


def _type_error(err: dacite.WrongTypeError, prefix: str) -> ConfigError:
    key = f"{prefix}{err.field_path}"
    if typing.get_origin(err.field_type) is typing.Literal:
        choices = ", ".join(map(repr, typing.get_args(err.field_type)))
        return ConfigError(f"{key}: must be one of {choices}, got {err.value!r}")
    return ConfigError(f"{key}: expected {_describe(err.field_type)}, got {err.value!r}")


def _is_sequence(hint: Any) -> bool:
    """Whether ``hint`` is a tuple or list type (also as ``... | None``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return all(_is_sequence(a) for a in options)
    return typing.get_origin(hint) in (tuple, list) or hint in (tuple, list)


def _section_type(hint: Any) -> type | None:
    """The dataclass a field holds (also as ``Section | None``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return sections[0] if len(sections) == 1 else None
    return None


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """An instance of the dataclass ``cls`` from a (nested) mapping; missing fields keep their defaults.

    dacite converts the values to the declared types; sections (nested dataclasses) are built here one by
    one, so that every error names its dotted key, and a section given in YAML changes its parent's default
    section rather than starting from the section class's defaults.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or one the dataclass refuses.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}")
    values = dict(data)
    for name, value in data.items():
        if isinstance(value, str) and _is_sequence(hints[name]):  # dacite would take a string for its characters
            raise ConfigError(f"{prefix}{name}: expected {_describe(hints[name])}, got {value!r}")
        section = _section_type(hints[name])
        if section is None or not isinstance(value, dict):
            continue
        default = _default(cls, name)
        if dataclasses.is_dataclass(default):
            value = _merge(to_dict(default), value)
        values[name] = build(section, value, prefix=f"{prefix}{name}.")
    try:
        return dacite.from_dict(cls, values, config=_DACITE)
    except dacite.WrongTypeError as err:
        raise _type_error(err, prefix) from err
    except dacite.DaciteError as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def _default(cls: type, name: str) -> Any:
    field = cls.__dataclass_fields__[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-ready mapping of a dataclass tree (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(config)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (values parsed as YAML) in a nested mapping, in order."""
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise ConfigError(f"override {override!r} is not of the form key.sub=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """The configuration ``cls`` from an optional YAML file and overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the configuration: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    return build(cls, apply_overrides(data, overrides))


def dump(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
