"""Load YAML configs, apply ``--set dotted.key=value`` overrides, validate.

Torch-free so the CLI and the sans-I/O parts can use it. Validation goes
through pydantic; its errors are rewritten as one :class:`ConfigError` that
names each bad key by its dotted path and says what would fix it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dropformer.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


D = TypeVar("D")


def dataclass_from_dict(cls: type[D], data: Mapping[str, Any], what: str) -> D:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError listing the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; known keys: {sorted(known)}")
    return cls(**data)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (YAML's own rule; PyYAML keeps the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file gives ``{}``); duplicate keys are errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "pass a YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a","b","c"], parsed value)``.

    The value is parsed as YAML, so ``3``, ``0.5``, ``true``, ``null``,
    ``[1, 2]`` and ``{a: 1}`` get their natural types; anything else is a string.
    """
    if "=" not in item:
        raise ConfigError(f"--set {item!r} has no '='; write it as --set dotted.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} has an empty key part; write it as --set dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a deep copy of ``config`` with each ``dotted.key=value`` applied.

    A numeric key part indexes into a list (``streams.0.id=mic``).
    """
    out: dict[str, Any] = copy.deepcopy(dict(config))
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            nxt = _child(node, part, item)
            if nxt is None:
                nxt = {}
                _assign(node, part, nxt, item)
            elif not isinstance(nxt, (dict, list)):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {item!r}: {where!r} is a value, not a section")
            node = nxt
        _assign(node, parts[-1], value, item)
    return out


def _child(node: Any, part: str, item: str) -> Any:
    if isinstance(node, list):
        idx = _index(node, part, item)
        return node[idx]
    return node.get(part)


def _assign(node: Any, part: str, value: Any, item: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, item)] = value
    else:
        node[part] = value


def _index(node: list[Any], part: str, item: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {item!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def load_config(path: str | Path | None, overrides: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``--set`` overrides, merged in that order."""
    merged: dict[str, Any] = copy.deepcopy(dict(defaults or {}))
    if path is not None:
        merged = deep_merge(merged, load_yaml(path))
    return apply_overrides(merged, overrides)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge mappings; values in ``top`` win, lists are replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate(model: type[M], raw: Mapping[str, Any], *, source: str = "config") -> M:
    """Validate ``raw`` against ``model``; raise :class:`ConfigError` naming each bad key."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, model)) from None


def _known_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that holds the key at ``loc`` (best effort)."""
    node: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or node is None:
            continue
        fields = getattr(node, "model_fields", {})
        if part not in fields:
            return []
        node = _model_in(fields[part].annotation)
    return list(getattr(node, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, source: str = "config", model: type[BaseModel] | None = None) -> str:
    lines = [f"invalid {source} ({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        kind = err["type"]
        if kind == "extra_forbidden":
            import difflib

            close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(model, tuple(err["loc"])), n=1)
            fix = f"did you mean {close[0]!r}?" if close else "remove it or check its spelling against configs/*.yaml"
            msg = "unknown key"
        elif kind == "missing":
            fix = f"add it to the YAML file or pass --set {key}=..."
            msg = "required key is missing"
        else:
            given = err.get("input")
            msg = f"{err['msg']} (got {given!r})" if not isinstance(given, (dict, list)) else err["msg"]
            fix = f"set a valid value with --set {key}=..."
        lines.append(f"  - {key}: {msg}; {fix}")
    return "\n".join(lines)
