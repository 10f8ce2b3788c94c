"""Typed YAML configs: nested dataclasses, dotted ``--set`` overrides, strict keys.

Why not OmegaConf/Hydra: they would give us merging, but their errors for an
unknown key or a wrong type name neither the YAML file nor the valid choices,
and Literal choices are not checked. This module is small and only does what
the configs need: str/int/float/bool, Optional, Literal, tuple/list, nested
dataclasses, and *plug-in sections*.

Plug-in sections: a section owned by a plug-in (``task.landmarks``,
``pretrain.contrastive``) is declared by the plug-in, not by the core. A
dataclass field marked with :func:`plugin_sections` holds them as a dict
``{section name: dataclass instance}``; in YAML they sit beside the section's
own keys (``task: {name: landmarks, landmarks: {head: heatmap}}``), and the
valid names come from a callable, so a new task adds its section without
editing the core.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, with the key and the file it came from."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell style) in a string."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is None:
            raise ConfigError(f"environment variable {name} is not set and has no default")
        return default

    return _ENV.sub(sub, text)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise a ConfigError naming ``key``."""
    origin = get_origin(tp)
    where = f"{key!r} in {source}"
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key, source)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, key, source)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, tp, where)


def _coerce_union(value: Any, tp: Any, key: str, source: str) -> Any:
    """``X | None`` and other unions: the first member that accepts the value."""
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key!r} in {source}: may not be null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, source)
        except ConfigError as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise ConfigError(errors[0])
    raise ConfigError(f"{key!r} in {source}: {value!r} fits none of {[_type_name(a) for a in args]}")


def _coerce_sequence(value: Any, tp: Any, key: str, source: str) -> Any:
    """``list[X]``, ``tuple[X, ...]`` and fixed-length ``tuple[X, Y]``."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key!r} in {source}: expected a list, got {value!r}")
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{key!r} in {source}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


#: ``1e-4``, ``5E-3``: numbers to a reader (and to YAML 1.2, JSON, Python), strings to PyYAML's YAML 1.1 resolver,
#: which wants a dot (``1.0e-4``); a float field takes them as the number they are
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    """bool, int, float (ints accepted), str (environment variables expanded); bools are never numbers."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, dict):  # {stem} in YAML is a mapping, not the text a template means
            raise ConfigError(f"{where}: expected a string, got the YAML mapping {value!r}; quote the value "
                              "(in YAML: key: \"{stem}_mask.png\"; on the command line: --set 'key=\"{stem}\"')")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return expand_env(value)
    raise ConfigError(f"{where}: unsupported config type {tp}")


SectionTypes = Callable[[], dict[str, type]]
_SECTIONS = "medtransfer_plugin_sections"


def plugin_sections(types_of: SectionTypes) -> Any:
    """A dataclass field holding plug-in sections; ``types_of()`` -> {section name: dataclass} (read lazily)."""
    return dataclasses.field(default_factory=dict, metadata={_SECTIONS: types_of})


def _sections_field(cls: type) -> tuple[str, SectionTypes] | None:
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _SECTIONS in f.metadata:
            return f.name, f.metadata[_SECTIONS]
    return None


def section_of(sections: dict[str, Any], name: str, types_of: SectionTypes, where: str) -> Any:
    """The section ``name`` from a plug-in sections dict, its defaults when the file did not set it."""
    if name not in sections:
        types = types_of()
        if name not in types:
            raise ConfigError(f"{where}: no option section {name!r}; sections: {sorted(types)}")
        sections[name] = from_dict(types[name], {}, source="<defaults>", prefix=f"{where}.{name}")
    return sections[name]


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error."""
    hints = get_type_hints(cls)
    plugin = _sections_field(cls)
    names = [f.name for f in dataclasses.fields(cls) if plugin is None or f.name != plugin[0]]  # type: ignore[arg-type]
    section_types = plugin[1]() if plugin else {}
    unknown = [k for k in data if k not in names and k not in section_types]
    if unknown:
        k = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {k!r} in {source}; valid keys here: {names + sorted(section_types)}")
    kwargs: dict[str, Any] = {}
    if plugin:
        kwargs[plugin[0]] = {name: _coerce(data.get(name) or {}, tp, f"{prefix}.{name}" if prefix else name, source)
                             for name, tp in section_types.items()}
    defaults = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, source)
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = from_dict(hints[name], {}, source=source, prefix=key)  # expands nested defaults
        elif isinstance(defaults[name].default, str):
            kwargs[name] = expand_env(defaults[name].default)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {source})") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__} in {source}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if _SECTIONS in f.metadata:  # plug-in sections sit beside the section's own keys
                out.update({k: to_dict(v) for k, v in sorted(getattr(obj, f.name).items())})
            else:
                out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_overrides(overrides: typing.Sequence[str]) -> dict[str, Any]:
    """``["a.b=3", "c=x"]`` -> nested dict; values are parsed as YAML scalars."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), _override_value(raw)))
    return nest_dotted(pairs, "--set")


def _override_value(raw: str) -> Any:
    """A ``--set`` value as YAML (``3`` -> 3, ``[32, 32]`` -> a list); a value YAML cannot parse is the string
    as typed: the README's own template ``{stem}.jpg`` is a broken YAML mapping but plainly meant as text."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def nest_dotted(pairs: typing.Iterable[tuple[str, Any]], source: str) -> dict[str, Any]:
    """``[("a.b", 3), ("c", "x")]`` -> ``{"a": {"b": 3}, "c": "x"}``; a key set both as a value and as a section
    is an error naming ``source``."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key!r}: {p!r} is set twice")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_error(path: Path, e: yaml.YAMLError) -> ConfigError:
    """One line: where YAML stopped and why (its own message spans 5-6 lines with carets)."""
    mark = getattr(e, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" ({context} that starts at line {cmark.line + 1})" if context and cmark is not None else ""
    return ConfigError(f"'{path}'{where}: not valid YAML: {problem}{started}")


def _duplicate_keys(node: yaml.Node, path: Path, prefix: str = "") -> None:
    """Refuse a key given twice in one mapping: YAML keeps the last one without a word, so ``train.epochs``
    written twice would silently train for the second value."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}{key}"
            if key is not None and key != "<<":  # "<<" is YAML's merge key, repeatable by design
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"'{path}', lines {seen[key]} and {line}: key {dotted!r} is given twice "
                                      "(YAML would keep the second silently); keep one")
                seen[key] = line
            _duplicate_keys(value_node, path, f"{dotted}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, path, f"{prefix[:-1]}[{i}].")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'")
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _duplicate_keys(node, path)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"'{path}': not a text file ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: typing.Sequence[str] = ()) -> T:
    """Load YAML ``path`` (or defaults when None) into ``cls``, then apply ``--set`` overrides."""
    data = load_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        source += " + --set " + " ".join(overrides)
    return from_dict(cls, data, source=source)
