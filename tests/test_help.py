"""--help of every command and subcommand reads as written at any terminal width: paragraphs re-flow to the
width, `\\b` blocks keep their lines, flags show no type, and every option's help shows whole."""
from __future__ import annotations

import re

import pytest
import typer
from rich.cells import cell_len
from typer.testing import CliRunner

from mmtm.cli.app import app

WIDTHS = (80, 160)
BOX = re.compile(r"[│╭╮╰╯─]")


def _commands(command, path: list[str]):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():  # a group: the app, bench
        yield from _commands(sub, path + [name])


COMMANDS = list(_commands(typer.main.get_command(app), []))


def flat(text: str) -> str:
    """The words of `text` with single spaces, boxes and padding gone."""
    return " ".join(BOX.sub(" ", text).split())


def paragraphs(command) -> tuple[list[str], list[list[str]]]:
    """The command's prose paragraphs (single-spaced) and the lines of its `\\b` blocks, from its help text."""
    prose, blocks = [], []
    for p in (command.help or "").split("\n\n"):
        if p.startswith("\b"):
            blocks.append([line for line in p[1:].split("\n") if line.strip()])
        else:
            prose.append(flat(p))
    return prose, blocks


def shown_lines(lines: list[str], paragraph: str) -> list[str] | None:
    """The consecutive lines of `lines` that show `paragraph`, or None when no run of lines shows it whole."""
    words = [flat(line) for line in lines]
    for start, first in enumerate(words):
        if not first or not paragraph.startswith(first):
            continue
        end, joined = start + 1, first
        while joined != paragraph and end < len(lines) and paragraph.startswith(f"{joined} {words[end]}"):
            joined = f"{joined} {words[end]}"
            end += 1
        if joined == paragraph:
            return lines[start:end]
    return None


def test_paragraph_search_sees_a_sentence_broken_where_the_source_was():
    """The check below can fail: a break before a word that would have fit is found."""
    lines = [" A sentence broken", " where its source was.", ""]
    shown = shown_lines(lines, "A sentence broken where its source was.")
    assert shown == lines[:2] and early_breaks(shown, 80) == [" A sentence broken"]
    assert shown_lines(lines, "A sentence not shown.") is None


def early_breaks(shown: list[str], width: int) -> list[str]:
    """Lines that end although the next line's first word would have fit on them (Rich keeps the last column
    of the terminal free)."""
    return [line for line, after in zip(shown, shown[1:])
            if cell_len(line.rstrip()) + 1 + cell_len(after.split()[0]) <= width - 1]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path, command", [pytest.param(p, c, id=" ".join(p) or "mmtm") for p, c in COMMANDS])
def test_help_reads_as_written(path, command, width):
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(map(cell_len, lines)) <= width
    assert "<bool>" not in r.output
    prose, blocks = paragraphs(command)
    assert prose, path
    for paragraph in prose:
        shown = shown_lines(lines, paragraph)
        assert shown is not None, (path, paragraph)
        assert early_breaks(shown, width) == [], (path, paragraph)
    stripped = [BOX.sub(" ", line).rstrip() for line in lines]
    for block in blocks:
        for line in block:
            if cell_len(line) + 2 <= width:  # Rich wraps only a line longer than the terminal
                assert any(s.endswith(line) and not s[:-len(line)].strip() for s in stripped), (path, line)


@pytest.mark.parametrize("width", WIDTHS)
def test_every_help_text_shows_in_full(width):
    """Rich reads `[word]` in a help text as markup and drops it; every option's help must reach --help whole."""
    for path, command in COMMANDS:
        shown = flat(CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)}).output)
        for param in command.params:
            if getattr(param, "help", None):
                assert flat(param.help) in shown, (path, param.name)
