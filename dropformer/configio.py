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


def _no_duplicates(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file gives ``{}``); duplicate keys are errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {str(p)!r} does not exist; pass an existing YAML file to --config"
        )
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {str(p)!r} is larger than {MAX_CONFIG_BYTES // 1024} kB; is it a config file?"
        )
    return parse_yaml(p.read_bytes(), repr(str(p)))


MAX_CONFIG_BYTES = 1024 * 1024


def parse_yaml(data: bytes | str, name: str = "config") -> dict[str, Any]:
    """A YAML mapping from ``data`` (text or UTF-8 bytes); :class:`ConfigError` for anything else
    (binary data, duplicate keys, nesting too deep, not a mapping)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {name} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "pass a YAML file"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {name} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"config file {name} nests too deep; is it a config file?") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"config file {name} must hold a mapping at the top level, not {type(doc).__name__}"
        )
    return doc


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
        raise ConfigError(
            f"--set {item!r} has an empty key part; write it as --set dotted.key=value"
        )
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
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
        raise ConfigError(
            f"--set {item!r}: {part!r} is not an index of a list of {len(node)} items"
        )
    return int(part)


def load_config(
    path: str | Path | None,
    overrides: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
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


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model an annotation can hold (through unions, Optional, Annotated, lists)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += [m for m in _models_in(arg) if m not in out]
    return out


def _tag(model: type[BaseModel]) -> tuple[str, Any] | None:
    """``model``'s discriminator (a one-value Literal field, e.g. ``("kind", "file")``), if any."""
    import typing

    for name, f in model.model_fields.items():
        args = typing.get_args(f.annotation)
        if typing.get_origin(f.annotation) is typing.Literal and len(args) == 1:
            return name, args[0]
    return None


def user_loc(
    model: type[BaseModel] | None, loc: tuple[Any, ...]
) -> tuple[list[Any], list[type[BaseModel]], list[type[BaseModel]]]:
    """The key path a user writes for pydantic's error location ``loc``, the models
    that may hold its last key, and (after a tagged union) the union's other members.

    Pydantic puts union branches into locations (``streams.0.source.file.block_ms``
    for the file branch of a tagged union, ``...device.str`` for a ``str | int``
    field); those parts are not keys a user can set, so they are left out
    (``streams.0.source.block_ms``).
    """
    if model is None:
        return list(loc), [], []
    out: list[Any] = []
    holders: list[type[BaseModel]] = [model]
    siblings: list[type[BaseModel]] = []
    node: Any = model
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, int):
            out.append(part)
            continue  # the list's items: _models_in looks through list[...]
        holders = _models_in(node)
        owner = next((m for m in holders if part in m.model_fields), None)
        if owner is not None:
            out.append(part)
            if not last:
                node = owner.model_fields[part].annotation
            continue
        tagged = [m for m in holders if (_tag(m) or ("", None))[1] == part]
        if tagged and not last:
            siblings = [m for m in holders if m is not tagged[0]]
            node = tagged[0]
            continue
        if holders or not _is_union(node):
            out.append(part)  # an unknown key, or a key of a dict
        # else: a branch name of a plain union (str, int, ...): not a key
    return out, holders, siblings


def _is_union(annotation: Any) -> bool:
    import types
    import typing

    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def format_validation_error(
    exc: ValidationError, source: str = "config", model: type[BaseModel] | None = None
) -> str:
    """One line per problem: the dotted key a user can set, what is wrong, and the fix
    (a suggested key always exists: see :func:`user_loc`)."""
    import difflib

    lines: list[str] = []
    for err in exc.errors():
        loc, holders, siblings = user_loc(model, tuple(err["loc"]))
        key = ".".join(str(p) for p in loc) or "<top level>"
        kind = err["type"]
        settable = kind != "invalid_key" and all(
            isinstance(p, int) or (isinstance(p, str) and p and not set(p) & set(".= "))
            for p in loc
        )
        if kind == "extra_forbidden":
            name = str(loc[-1])
            parent = ".".join(str(p) for p in loc[:-1])
            owner = next((m for m in siblings if name in m.model_fields), None)
            tag = _tag(owner) if owner is not None else None
            close = difflib.get_close_matches(
                name, [k for m in holders for k in m.model_fields], n=1
            )
            if tag is not None:
                fix = f"it belongs to {tag[0]}={tag[1]}: set {parent + '.' if parent else ''}{tag[0]}={tag[1]} or remove it"
            elif close:
                fix = f"did you mean {(parent + '.' if parent else '') + close[0]!r}?"
            else:
                fix = "remove it or check its spelling against configs/*.yaml"
            msg = "unknown key"
        elif kind == "missing":
            fix = (
                f"add it to the YAML file or pass --set {key}=..."
                if settable
                else "add it to the YAML file"
            )
            msg = "required key is missing"
        elif kind == "value_error":  # the project's own checks: their message names the fix
            text = str(err["msg"]).removeprefix("Value error, ")
            line = f"  - {key}: {text}" if loc else f"  - {text}"
            if line not in lines:
                lines.append(line)
            continue
        else:
            given = err.get("input")
            msg = (
                f"{err['msg']} (got {given!r})"
                if not isinstance(given, (dict, list))
                else err["msg"]
            )
            fix = (
                f"set a valid value with --set {key}=..."
                if settable
                else "fix it in the config file"
            )
        line = f"  - {key}: {msg}; {fix}"
        if line not in lines:  # the branches of a union report one key twice
            lines.append(line)
    return "\n".join(
        [f"invalid {source} ({len(lines)} problem{'s' if len(lines) != 1 else ''}):", *lines]
    )
