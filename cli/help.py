"""--help as it was written, for every command: `App` is the app's Typer, whose groups and commands reflow their
paragraphs to the terminal, show no value type for flags and every default as `[default: ...]` (and read old flag
spellings, cli/spellings.py).

Typer 0.29 hands a docstring's later paragraphs to Rich with their source line breaks, which Rich keeps, so a
sentence broke wherever the source did; and its Rich option panel shows the type of every option, `<bool>` for
flags that take no value."""
from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from mmtm.cli.spellings import Respelled


def reflow(text: str | None) -> str | None:
    """Each paragraph on one line for Rich to wrap; a paragraph that starts with `\\b` keeps its lines."""
    if not text:
        return text
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip(" \t") for line in p.split("\n"))
                       for p in text.split("\n\n"))


def _untyped(param) -> None:
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""  # the panel shows a set metavar in place of the type


class _SaidDefault(TyperOption):
    """An option whose default is described in words (`show_default="..."`: what the preset or the data decides):
    shown `[default: words]` like every other default, not Typer's `[default: (words)]`."""

    def _get_default_string(self, **kwargs) -> str:
        return self.show_default


def _said(param) -> None:
    if type(param) is TyperOption and isinstance(param.show_default, str):
        param.__class__ = _SaidDefault


class _ReadableHelp:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = reflow(self.help)
        for param in self.params:
            _untyped(param)
            _said(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)  # made on first use, so not among self.params above
        if option is not None:
            _untyped(option)
        return option


class ReadableCommand(_ReadableHelp, Respelled, TyperCommand):
    pass


class ReadableGroup(_ReadableHelp, Respelled, TyperGroup):
    pass


class App(typer.Typer):
    """A Typer whose commands are `ReadableCommand`s and whose group is a `ReadableGroup` (or a subclass)."""

    def __init__(self, *, cls: type[ReadableGroup] = ReadableGroup, **kwargs):
        super().__init__(cls=cls, **kwargs)

    def command(self, *args, cls: type[ReadableCommand] = ReadableCommand, **kwargs):
        return super().command(*args, cls=cls, **kwargs)
