"""The config reference page, generated from the pydantic models: every key of `RunConfig` with
its dotted path, type and constraints, default, and the docstring written under its field (read
with griffe, as mkdocstrings reads them); and `resolve_key`, which pages' mentions of keys are
checked and linked with (docs/hooks.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from typing import Any

import griffe
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic_core import PydanticUndefined

CONFIG_PAGE = "reference/config.md"


@dataclasses.dataclass
class ConfigKey:
    """One key of the config tree: a field of a section, or a section itself."""

    path: str
    """Dotted path, `<key>` standing for any key of a mapping (`human.controls.<key>.value`)."""
    annotation: Any
    info: Any
    """The pydantic `FieldInfo`."""
    description: str
    section: type | None = None
    """The section model this key holds (a nested pydantic dataclass), if any."""
    section_path: str = ""
    """The path of the section's own keys' parent (`human.controls.<key>` for `human.controls`)."""
    free_form: bool = False
    """A mapping or `Any`: any key below it is valid (`env.kwargs.map.min_size`)."""


@functools.cache
def _harvest_docs() -> griffe.Module:
    """Harvest's source read statically, for the docstrings written under fields."""
    return griffe.load("harvest", resolve_aliases=False)


def griffe_class(cls: type) -> griffe.Object | None:
    try:
        return _harvest_docs()[f"{cls.__module__}.{cls.__qualname__}".removeprefix("harvest.")]
    except KeyError:
        return None


def _field_description(cls: type, name: str, info: Any) -> str:
    if info.description:
        return info.description
    found = griffe_class(cls)
    member = found.members.get(name) if found is not None else None
    return member.docstring.value if member is not None and member.docstring else ""


def _class_description(cls: type) -> str:
    found = griffe_class(cls)
    return found.docstring.value if found is not None and found.docstring else ""


@functools.cache
def _top_level_summaries() -> dict[str, str]:
    """The summary line of each top-level section, from `harvest.cluster.config`'s module docstring
    (`    replay:      rollout.config.ReplayConfig (shards, capacity)`)."""
    from harvest.cluster import config

    lines = re.findall(r"^ {4}(\w+): +(.+)$", config.__doc__ or "", re.MULTILINE)
    # the class a line names is on the section's own table: keep what is in parentheses
    return {name: re.sub(r"^[\w.]*Config\b\s*\(?(.*?)\)?$", r"\1", summary) for name, summary in lines}


def _sections_in(annotation: Any) -> list[tuple[str, type]]:
    """The section models a field's type holds, each with the path part between the field and
    its keys (`.<key>` for a mapping's values, `.<index>` for a list's items)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if is_pydantic_dataclass(annotation):
        return [("", annotation)]
    if origin is typing.Annotated:
        return _sections_in(args[0])
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in _sections_in(arg)]
    if origin in (list, tuple) and args:
        return [(".<index>" + infix, model) for infix, model in _sections_in(args[0])]
    if origin is dict and args:
        return [(".<key>" + infix, model) for infix, model in _sections_in(args[1])]
    return []


def _is_free_form(annotation: Any) -> bool:
    """A mapping of plain values, or `Any`: keys below it are the user's."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any or origin is dict:
        return True
    if origin is typing.Annotated:
        return _is_free_form(args[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_free_form(arg) for arg in args)
    return False


@functools.cache
def config_keys() -> tuple[ConfigKey, ...]:
    """Every key of `RunConfig`, depth first: a section's fields, then its subsections' keys."""
    from harvest.cluster.config import RunConfig

    return tuple(_section_keys(RunConfig, ""))


def _section_keys(model: type, prefix: str) -> list[ConfigKey]:
    keys: list[ConfigKey] = []
    for name, info in model.__pydantic_fields__.items():
        path = prefix + name
        sections = _sections_in(info.annotation)
        section = sections[0][1] if sections else None
        infix = sections[0][0] if sections else ""
        description = (
            _field_description(model, name, info)
            or (_class_description(section) if section else "")
            or (_top_level_summaries().get(name, "") if not prefix else "")
        )
        keys.append(
            ConfigKey(
                path,
                info.annotation,
                info,
                description,
                section=section,
                section_path=path + infix if section else "",
                free_form=not sections and _is_free_form(info.annotation),
            )
        )
        if section is not None:
            keys.extend(_section_keys(section, f"{path}{infix}."))
    return keys


def type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_text(arg) for arg in args)}]"
    if is_pydantic_dataclass(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (
    ("ge", "≥ {}"),
    ("gt", "> {}"),
    ("le", "≤ {}"),
    ("lt", "< {}"),
    ("min_length", "length ≥ {}"),
    ("max_length", "length ≤ {}"),
    ("pattern", "matches `{}`"),
)


def _constraints(info: Any) -> list[str]:
    found = []
    for item in info.metadata:
        for attribute, text in _BOUNDS:
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(text.format(value))
    return found


def _value_text(value: Any) -> str:
    """A value as it is written in the YAML config."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str).replace('"', "") if value else json.dumps(value)
    return repr(value)


def _default_text(key: ConfigKey) -> str:
    info = key.info
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if is_pydantic_dataclass(type(value)):
        return "its defaults"
    return f"`{_value_text(value)}`"


def escape(text: str) -> str:
    """Prose from a docstring or help text as one table cell: one line; `<`, `>`, `*` and `|`
    taken literally outside code spans (where Markdown keeps them as they are)."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    for index in range(0, len(parts), 2):
        parts[index] = (
            parts[index]
            .replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace("*", r"\*")
            .replace("|", r"\|")
            .replace("[", r"\[")
            .replace("]", r"\]")
        )
    return "".join(parts)


def anchor(path: str) -> str:
    """The HTML id of a config key's reference entry (or of a section's heading)."""
    return path.replace("<", "").replace(">", "")


def _key_cell(key: ConfigKey) -> str:
    if key.section is not None:  # a section: a link to its own table
        return f"[`{key.path}`](#{anchor(key.section_path)})"
    shown = key.path.replace("<", "&lt;").replace(">", "&gt;")
    return f'<code id="{anchor(key.path)}">{shown}</code>'


def config_reference() -> str:
    """The config reference page: one table per section, every key in it."""
    from harvest.cluster.config import RunConfig

    keys = config_keys()
    lines = [
        "# Config reference",
        "",
        "<!-- Generated from the pydantic models at every build (docs/hooks.py): do not edit. -->",
        "",
        "One YAML file describes a run; each section below is a key of it, e.g.",
        "",
        "```yaml",
        "env: {id: CartPole-v1, num_envs: 8}",
        "replay: {num_shards: 2}",
        "```",
        "",
        "`harvest run CONFIG --set replay.num_shards=4` (or `overrides=[...]` in the Python API) sets one",
        "key and goes through the same validation. Unknown keys and wrong types are refused, the file and",
        "key path named. `harvest config` prints the resolved config. `<key>` in a path stands for any key",
        "of a mapping.",
        "",
        f"This page is generated from `{RunConfig.__module__}.RunConfig` and the sections it holds: "
        "each entry is the docstring written under its field.",
        "",
    ]
    sections = [("", RunConfig)] + [(key.section_path, key.section) for key in keys if key.section is not None]
    for prefix, model in sections:
        if prefix:
            lines += [f"## `{prefix}` {{#{anchor(prefix)}}}", ""]
        else:
            lines += ["## Sections", ""]
        description = _class_description(model)
        if description and model is not RunConfig:
            lines += [escape(description), ""]
        lines += [
            f"*`{model.__module__}.{model.__qualname__}`*",
            "",
            "| key | type | default | description |",
            "| --- | --- | --- | --- |",
        ]
        for key in keys:
            parent = key.path.rsplit(".", 1)[0] if "." in key.path else ""
            if parent != prefix:
                continue
            type_cell = ", ".join([f"`{type_text(key.annotation)}`", *_constraints(key.info)])
            lines.append(f"| {_key_cell(key)} | {type_cell} | {_default_text(key)} | {escape(key.description)} |")
        lines.append("")
    return "\n".join(lines)


@functools.cache
def _key_anchors() -> dict[str, str]:
    """Every config path a page may name (keys, and `<key>` levels of mappings) -> its anchor."""
    anchors = {}
    for key in config_keys():
        anchors[key.path] = anchor(key.section_path or key.path)
        if key.section_path and key.section_path != key.path:
            anchors[key.section_path] = anchor(key.section_path)
    return anchors


def resolve_key(path: str) -> str | None:
    """The anchor of a dotted config key's reference entry (a key inside a free-form mapping, such
    as `env.kwargs.max_steps`, resolves to the mapping's); None when the config has no such key."""
    anchors = _key_anchors()
    free_form = {key.path for key in config_keys() if key.free_form}
    walked = ""
    for part in path.split("."):
        for candidate in (f"{walked}.{part}", f"{walked}.<key>", f"{walked}.<index>") if walked else (part,):
            if candidate in anchors:
                walked = candidate
                break
        else:
            return None
        if walked in free_form:
            break
    return anchors[walked]
