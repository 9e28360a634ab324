"""MkDocs hooks: the reference pages are generated from the code at every build, and the
hand-written pages are checked against it, so no page can hold a stale copy.

- `reference/config.md`: every key of `RunConfig`, walked through the pydantic models: its
  dotted path, type and constraints, default, and the docstring written under the field.
- `reference/cli.md`: every command of `harvest.cluster.cli._parser()`: description, usage,
  arguments and options with their help, and the examples of `COMMANDS`.
- `<!-- harvest:NAME -->` in a page is replaced by a generated block (`BLOCKS`): the manifest's
  fields (from the `Manifest` and `FileEntry` dataclasses) and its format versions.
- Config keys in inline code (`` `replay.num_shards` ``) become links to their reference entry;
  a key that does not exist is a warning, and so is a `harvest ...` command line (inline or in a
  fenced block) naming a command, an option or a `--set` key the parser or the config lacks.
- `reference/api.md` must document every name `harvest` exports (`harvest.__all__`).

Warnings fail `mkdocs build --strict` (`make docs`).
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import typing
from typing import Iterator

# MkDocs puts this folder on sys.path while it loads the hooks.
from cli_reference import CLI_PAGE, check_command, cli_reference
from config_reference import CONFIG_PAGE, config_keys, config_reference, escape, griffe_class, resolve_key, type_text
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = get_plugin_logger("harvest")

API_PAGE = "reference/api.md"

FILE_EXTENSIONS = {
    "yaml",
    "yml",
    "json",
    "jsonl",
    "py",
    "md",
    "npz",
    "h5",
    "hdf5",
    "parquet",
    "png",
    "gif",
    "html",
    "csv",
    "tfrecord",
    "safetensors",
    "log",
    "arrow",
    "txt",
}
"""Last parts that make `run.yaml` or `eval.json` a file name, not a config key."""


# --- Generated blocks inside hand-written pages ----------------------------------------------------


_MANIFEST_NOTES = {
    "Manifest": {
        "run_id": "The run (or edit, or import) that wrote the dataset.",
        "created_at": "When the manifest was written (ISO 8601, UTC).",
        "env_id": "The env the rows come from (`env.id`).",
        "rows": "Rows (transitions) in all files.",
        "episodes": "Episodes with rows in the dataset (complete or cut off by the end of collection).",
        "episodes_complete": "Episodes that ended (`terminated` or `truncated`) inside the dataset.",
        "collectors": "The `collector_id`s that gave rows.",
        "schema": "Every column's dtype and per-row shape, and the env's spaces (JSON); readers check rows against it.",
        "files": "The Parquet files, one entry each (below).",
        "npz": "The NPZ file's name, when `aggregation.formats` has `npz` (also in `formats`).",
        "first_timestamp": "The earliest row's `timestamp` (ISO 8601, UTC).",
        "last_timestamp": "The latest row's `timestamp`.",
        "format_version": "The layout's version (see Versioning below).",
    },
    "FileEntry": {
        "path": "The file, relative to the dataset folder (`collector_id=3/shard-000-part-00000.parquet`).",
        "rows": "Rows in the file.",
        "bytes": "The file's size; checked before it is read.",
        "sha256": "The file's hash; checked the first time it is read.",
        "shard_index": "The replay shard whose rows the file holds.",
        "episodes": "Episodes in the file (an episode never spans files).",
        "first_timestamp": "The file's earliest `timestamp`.",
        "last_timestamp": "Its latest.",
    },
}
"""What the manifest's fields hold where no docstring under the field says it (a docstring, once
written, wins; a note for a field that is gone is a warning)."""


def _dataclass_fields_table(cls: type) -> list[str]:
    notes = _MANIFEST_NOTES.get(cls.__name__, {})
    hints = typing.get_type_hints(cls)
    found = griffe_class(cls)
    lines = ["| field | type | what |", "| --- | --- | --- |"]
    for field in dataclasses.fields(cls):
        member = found.members.get(field.name) if found is not None else None
        description = member.docstring.value if member is not None and member.docstring else notes.get(field.name)
        if not description:
            log.warning(
                f"{cls.__module__}.{cls.__name__}.{field.name}: no description; write a docstring under "
                "the field, or a line in docs/hooks.py _MANIFEST_NOTES"
            )
        lines.append(f"| `{field.name}` | `{type_text(hints[field.name])}` | {escape(description or '')} |")
    for name in notes:
        if name not in {field.name for field in dataclasses.fields(cls)}:
            log.warning(f"docs/hooks.py _MANIFEST_NOTES: {cls.__name__} has no field {name!r} any more")
    return lines + [""]


def _manifest_fields() -> str:
    from harvest.aggregation.manifest import FileEntry, Manifest

    return "\n".join(
        _dataclass_fields_table(Manifest) + ["Each entry of `files`:", ""] + _dataclass_fields_table(FileEntry)
    )


def _format_versions() -> str:
    from harvest.aggregation import manifest

    older = [str(version) for version in manifest.READABLE_VERSIONS if version != manifest.FORMAT_VERSION]
    return (
        f"Harvest writes `format_version: {manifest.FORMAT_VERSION}` in `{manifest.MANIFEST_NAME}` and reads "
        f"versions {', '.join(str(v) for v in manifest.READABLE_VERSIONS)}"
        + (f" (datasets written in {', '.join(older)} open as they are)" if older else "")
        + "."
    )


BLOCKS = {"manifest-fields": _manifest_fields, "format-versions": _format_versions}
"""`<!-- harvest:NAME -->` in a page is replaced by `BLOCKS[NAME]()`."""


# --- Hooks ----------------------------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages (built in memory; nothing is written to docs/)."""
    for src_uri, generate in ((CONFIG_PAGE, config_reference), (CLI_PAGE, cli_reference)):
        if files.get_file_from_path(src_uri) is not None:
            log.warning(f"docs/{src_uri} exists, but the page is generated: remove the file")
            files.remove(files.get_file_from_path(src_uri))
        files.append(File.generated(config, src_uri, content=generate()))
    return files


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(?<![`\w])(\[?)`([^`\n]+)`(?!`)")
_CONFIG_KEY = re.compile(r"[a-z_]+(\.[a-z0-9_]+)+")


def _outside_fences(markdown: str) -> Iterator[tuple[bool, str]]:
    """The page's lines, each with whether it is inside a fenced code block."""
    fence = None
    for line in markdown.split("\n"):
        found = _FENCE.match(line)
        if fence is None and found:
            fence = found.group(2)
            yield True, line
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            yield True, line
        else:
            yield False, line


def _command_lines(lines: list[str]) -> Iterator[str]:
    """Command lines in fenced blocks, `\\`-continued lines joined; a `$ ` prompt dropped."""
    joined = ""
    for line in lines:
        joined += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            yield joined.strip().removeprefix("$ ")
            joined = ""


def _check_and_link(markdown: str, page: Page) -> str:
    """The page with config keys in inline code linked to the config reference; unknown keys and
    bad `harvest ...` command lines (inline or in fenced blocks) logged as warnings."""
    where = page.file.src_uri
    config_url = posixpath.relpath(CONFIG_PAGE, posixpath.dirname(where) or ".")
    sections = {key.path for key in config_keys() if "." not in key.path}

    def warn(problems: list[str]) -> None:
        for problem in problems:
            log.warning(f"{where}: {problem}")

    def inline(found: re.Match, linking: bool) -> str:
        bracket, code = found.group(1), found.group(2)
        if code.startswith(("harvest ", "--set ")):
            warn(check_command(code if code.startswith("harvest ") else f"harvest run {code}"))
            return found.group(0)
        if (
            not _CONFIG_KEY.fullmatch(code)
            or code.split(".")[0] not in sections
            or code.rsplit(".", 1)[-1] in FILE_EXTENSIONS
        ):
            return found.group(0)
        target = resolve_key(code)
        if target is None:
            warn([f"`{code}`: no such config key (see {CONFIG_PAGE})"])
        if target is None or bracket or not linking:  # unknown, already a link's text, or in a heading
            return found.group(0)
        return f"[`{code}`]({config_url}#{target})"

    out, fenced = [], []
    for inside, line in _outside_fences(markdown + "\n"):  # the extra line ends a fence that ends the page
        if inside:
            fenced.append(line)
            out.append(line)
            continue
        for command in _command_lines(fenced):
            warn(check_command(command.removeprefix(".venv/bin/")))
        fenced = []
        heading = line.lstrip().startswith("#")
        out.append(_INLINE_CODE.sub(lambda found, heading=heading: inline(found, linking=not heading), line))
    return "\n".join(out[:-1])


def _check_api_page(markdown: str) -> None:
    import harvest

    documented = set(re.findall(r"^:::\s*([\w.]+)", markdown, re.MULTILINE))
    for name in harvest.__all__:
        if name in ("DISTRIBUTION", "__version__"):
            continue
        target = f"{harvest._EXPORTS[name]}.{name}"
        if target not in documented:
            log.warning(f"{API_PAGE}: harvest.{name} is exported but not documented (add `::: {target}`)")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Fill the generated blocks, link config keys, and check keys and commands."""
    for name in re.findall(r"<!-- harvest:([\w-]+) -->", markdown):
        if name not in BLOCKS:
            log.warning(f"{page.file.src_uri}: <!-- harvest:{name} -->: no such block (blocks: {', '.join(BLOCKS)})")
            continue
        markdown = markdown.replace(f"<!-- harvest:{name} -->", BLOCKS[name]())
    if page.file.src_uri == API_PAGE:
        _check_api_page(markdown)
    return _check_and_link(markdown, page)
