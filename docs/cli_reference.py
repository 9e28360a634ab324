"""The CLI reference page, generated from the argparse parser (`harvest.cluster.cli._parser()`):
every command's description, usage, arguments and options with their help, and its examples
(`COMMANDS`); and `check_command`, which command lines in the pages are checked with
(docs/hooks.py)."""

from __future__ import annotations

import argparse
import re
import shlex

from config_reference import escape, resolve_key

CLI_PAGE = "reference/cli.md"


def _parser() -> argparse.ArgumentParser:
    from harvest.cluster.cli import _parser as harvest_parser

    return harvest_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse lists its actions nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)  # not the terminal's width: the page stays the same
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return {"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} ..."}.get(action.nargs, name)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or (("{" + ",".join(action.choices) + "}") if action.choices else action.dest.upper())
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    if action.choices and not action.option_strings and not action.metavar:
        text = f"one of {', '.join(f'`{choice}`' for choice in action.choices)}: {text}"
    return text


def _option_default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS) or action.required:
        return ""
    return f"`{action.default}`"


def _arguments_tables(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for group in parser._action_groups:
        actions = [
            action
            for action in group._group_actions
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if not actions:
            continue
        lines += [f"**{group.title}**", "", "| argument | default | description |", "| --- | --- | --- |"]
        for action in actions:
            notes = [
                " (required)" if action.required and action.option_strings else "",
                " (repeat for several)" if isinstance(action, argparse._AppendAction) else "",
            ]
            lines.append(
                f"| `{_invocation(action)}`{''.join(notes)} | {_option_default(action)} | "
                f"{escape(_help_text(action, parser.prog))} |"
            )
        lines.append("")
    return lines


def cli_reference() -> str:
    """The CLI reference page: the `harvest` command, then each subcommand."""
    from harvest.cluster.cli import COMMANDS

    parser = _parser()
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated from the argparse parser at every build (docs/hooks.py): do not edit. -->",
        "",
        "Generated from `harvest.cluster.cli._parser()`: what `harvest COMMAND --help` prints, command by "
        "command. Every command also takes `-h`, `--help`.",
        "",
        "## `harvest` {#harvest}",
        "",
        "```text",
        _usage(parser),
        "```",
        "",
        "```text",
        (parser.description or "").strip(),
        "```",
        "",
        *_arguments_tables(parser),
        "```text",
        (parser.epilog or "").strip(),
        "```",
        "",
    ]
    for name, subparser in _subparsers(parser).items():
        lines += [
            f"## `harvest {name}` {{#harvest-{name}}}",
            "",
            escape(subparser.description or ""),
            "",
            "```text",
            _usage(subparser),
            "```",
            "",
            *_arguments_tables(subparser),
        ]
        examples = COMMANDS.get(name, ("", []))[1]
        if examples:
            lines += ["Examples:", "", "```bash", *examples, "```", ""]
    return "\n".join(lines)


def check_command(line: str) -> list[str]:
    """Problems in a `harvest ...` command line: a command, option or `--set` key that does not
    exist. Words in capitals and `[...]` / `a|b` are taken as the placeholders of a synopsis."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    words = [word.strip("[]") for word in words]
    if not words or not words[0].endswith("harvest"):
        return []
    for stop in ("|", "||", "&&", ";", ">", "2>&1"):
        if stop in words:
            words = words[: words.index(stop)]
    parser = _parser()
    global_options = {option for action in parser._actions for option in action.option_strings}
    words = words[1:]
    while words and words[0] in global_options:
        words = words[1:]
    if not words or words[0].startswith("-") or words[0].isupper():  # `harvest --help`, `harvest COMMAND`
        return []
    commands = _subparsers(parser)
    if words[0] not in commands:
        return [f"`harvest {words[0]}`: no such command (commands: {', '.join(commands)})"]
    options = {option for action in commands[words[0]]._actions for option in action.option_strings}
    problems = []
    for previous, word in zip([""] + words, words):
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            if option not in options | global_options:
                problems.append(f"`harvest {words[0]} {option}`: no such option")
        if previous == "--set" and re.fullmatch(r"[a-z_][a-z0-9_.]*=.*", word, re.DOTALL):
            key = word.split("=", 1)[0]
            if resolve_key(key) is None:
                problems.append(f"`--set {key}`: no such config key")
    return problems
