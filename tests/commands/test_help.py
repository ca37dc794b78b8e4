"""``dicom-node --help`` and every sub-command's: each says what it does and shows an example, so
that a newcomer never has to guess a command line.

Not covered: whether the examples run (the README's are run by tests/e2e/test_readme.py).
"""

from __future__ import annotations

import argparse
from typing import Iterator

import pytest

from dicom_node.cli import build_parser, main


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser``, with the words that reach it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


ALL = sorted(commands(build_parser()), key=lambda c: c[0])


def test_the_tree_is_walked() -> None:
    names = {" ".join(path) for path, _ in ALL}
    assert {
        "up",
        "serve",
        "worker",
        "ae list",
        "series list",
        "jobs list",
        "model predict",
        "phantom",
        "admin create-user",
    } <= names


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_command_says_what_it_does_with_an_example(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert parser.description and len(parser.description) > 15, f"dicom-node {' '.join(path)} has no description"
    assert parser.epilog and parser.epilog.startswith(("example:", "examples:")), (
        f"dicom-node {' '.join(path)} has no example"
    )
    examples = [line.strip() for line in parser.epilog.splitlines()[1:] if line.strip()]
    assert any(path[-1] in line and ("dicom-node" in line) for line in examples), (
        f"the example of dicom-node {' '.join(path)} does not use it"
    )
    assert parser.format_help().count("\n") > 3


def test_top_level_help_shows_the_first_steps(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "dicom-node up" in out and "Ctrl+C" in out and "-v, --verbose, --debug" in out


def test_the_password_rule_comes_before_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["admin", "create-user", "--help"])
    assert "10 to 1024 characters" in capsys.readouterr().out
