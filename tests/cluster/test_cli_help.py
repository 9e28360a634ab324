"""The command's manners: every subcommand says what it does and shows examples that parse, every
option has help text, and `harvest --help` answers without loading Ray, torch or pyarrow."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harvest.cluster.cli import COMMANDS, _parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_has_a_description_examples_and_help_on_every_option():
    parsers = subcommands()
    assert sorted(parsers) == sorted(COMMANDS)
    for name, parser in parsers.items():
        assert parser.description and "examples:\n  harvest " + name in parser.format_help(), name
        undocumented = [
            action.option_strings or action.dest
            for action in parser._actions
            if not action.help and not isinstance(action, argparse._HelpAction)
        ]
        assert not undocumented, f"harvest {name}: {undocumented}"


@pytest.mark.parametrize("example", [example for _, examples in COMMANDS.values() for example in examples])
def test_every_example_in_the_help_parses(example):
    argv = shlex.split(example)
    assert argv[0] == "harvest"
    _parser().parse_args(argv[1:])


def test_help_and_version_load_no_ray_torch_or_pyarrow():
    code = (
        "import sys, contextlib, io\nfrom harvest.cluster.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('ray', 'torch', 'pyarrow', 'pydantic', 'numba') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-3000:]


def test_the_example_configs_come_with_harvest(capsys):
    from harvest.cluster.cli import EXIT_USAGE, main

    files = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert main(["example"]) == 0
    listed = capsys.readouterr().out
    assert [line.split()[0] for line in listed.splitlines()[: len(files)]] == [path.stem for path in files]
    for path in files:
        assert main(["example", path.stem]) == 0 and capsys.readouterr().out == path.read_text()
    assert main(["example", "cartpole_bc.yaml"]) == 0 and "env:" in capsys.readouterr().out
    assert main(["example", "nope"]) == EXIT_USAGE
    assert "no example 'nope'; the examples are: car_racing_bc," in capsys.readouterr().err
