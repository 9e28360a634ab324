"""The docs site: `mkdocs build --strict` passes, the generated config reference holds every key
of `RunConfig` and the CLI reference every command and option of the parser, and a stale page
(a key, option or anchor the code no longer has; a hand copy of a generated page) fails the build."""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")

from mkdocs.commands.build import build  # noqa: E402
from mkdocs.config import load_config  # noqa: E402
from mkdocs.exceptions import Abort  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

from harvest.cluster.cli import _parser  # noqa: E402
from harvest.cluster.config import RunConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    return defs[node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node


def _sections(node: dict[str, Any], defs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The sections (objects with properties) a field's schema holds, with the path part between
    the field and their keys."""
    node = _resolve(node, defs)
    if "properties" in node:
        yield "", node
    for alternative in node.get("anyOf", []):
        yield from _sections(alternative, defs)
    if isinstance(node.get("additionalProperties"), dict):
        yield from ((".<key>" + infix, section) for infix, section in _sections(node["additionalProperties"], defs))
    if isinstance(node.get("items"), dict):
        yield from ((".<index>" + infix, section) for infix, section in _sections(node["items"], defs))


def config_paths() -> list[str]:
    """Every dotted key of `RunConfig`, walked through pydantic's JSON schema of it (apart from
    how docs/hooks.py walks the models)."""
    schema = TypeAdapter(RunConfig).json_schema()
    defs = schema.get("$defs", {})

    def walk(section: dict[str, Any], prefix: str) -> Iterator[str]:
        for name, field in section["properties"].items():
            yield prefix + name
            for infix, nested in _sections(field, defs):
                yield from walk(nested, f"{prefix}{name}{infix}.")

    return list(walk(schema, ""))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if not isinstance(action, argparse._HelpAction)
    }


def section_of(page: str, heading_id: str) -> str:
    """The HTML from the heading with this id to the next h2."""
    start = page.index(f'id="{heading_id}"')
    end = page.find("<h2", start)
    return page[start:] if end < 0 else page[start:end]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as `make docs` builds it, from a folder other than the repository."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    out = elsewhere / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_config_reference_holds_every_key_of_run_config(site):
    page = (site / "reference" / "config" / "index.html").read_text()
    paths = config_paths()
    assert len(paths) > 200 and "replay.num_shards" in paths and "human.controls.<key>.value" in paths
    missing = [path for path in paths if f">{html.escape(path)}</code>" not in page]
    assert not missing, f"keys the config reference lacks: {missing}"
    entry = section_of(page, "replay")  # a key's row: its type and constraint, default and docstring
    row = entry[entry.index('id="replay.num_shards"') :].split("</tr>")[0]
    assert "<code>int</code>, ≥ 1" in row and "<code>2</code>" in row and "every row of an episode" in row


def test_the_cli_reference_holds_every_command_and_option(site):
    page = (site / "reference" / "cli" / "index.html").read_text()
    parser = _parser()
    for option in options(parser):
        assert f"<td><code>{option}</code>" in section_of(page, "harvest"), option
    assert "<code>-h</code>, <code>--help</code>" in page
    commands = subcommands(parser)
    assert {"run", "export", "inspect", "submit", "generals-gif"} <= set(commands)
    for name, command in commands.items():
        section = section_of(page, f"harvest-{name}")
        documented = set(re.findall(r"<tr>\s*<td><code>([^<]*)</code>", section))  # the arguments tables' first cells
        documented = {word.strip(",") for cell in documented for word in html.unescape(cell).split()}
        missing = [option for option in options(command) if option not in documented]
        assert not missing, f"harvest {name}: options the CLI reference lacks: {missing}"
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", section)).split())
        assert command.description.replace("`", "")[:60] in text and "Examples:" in text


def test_a_stale_page_fails_the_strict_build(tmp_path, caplog):
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    with open(docs / "concepts.md", "a") as page:
        page.write(
            "\n\nStale: `replay.num_shardz`, `harvest inspect --htm`, [gone](reference/config.md#replay.gone).\n"
            "\n```bash\nharvest run my-run.yaml --set rollout.stepz=10\n```\n"
        )
    (docs / "reference" / "config.md").write_text("# Config reference\n\nA hand copy: `replay.num_shards`.\n")
    config = load_config(str(REPO / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(tmp_path / "site"), strict=True)
    with caplog.at_level(logging.WARNING, logger="mkdocs"), pytest.raises(Abort, match="strict mode"):
        build(config)
    warnings = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING)
    for stale in (
        "`replay.num_shardz`: no such config key",
        "`harvest inspect --htm`: no such option",
        "`--set rollout.stepz`: no such config key",
        "does not contain an anchor '#replay.gone'",
        "reference/config.md exists, but the page is generated",
    ):
        assert stale in warnings, warnings
