"""MkDocs hook: the CLI reference page, generated from the `avemo` command's own parsers.

``docs/cli.md`` holds a marker line; at build time it is replaced by one section per command of
``avemo.cli.COMMANDS``: a heading and the command's ``--help`` exactly as ``build_parser(name)`` formats it.
Nothing is retyped, so the page cannot drift from the code. The training commands' parsers are built from
the config dataclasses, which import torch: the site builds in the development install (``.[dev]``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

PAGE = "cli.md"
MARKER = "<!-- cli-reference -->"
COLUMNS = 100  # argparse wraps help to $COLUMNS: fixed, so the page is the same on every terminal and machine


def command_help(name: str) -> str:
    """``avemo NAME --help`` as text, wrapped at ``COLUMNS``."""
    from avemo.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(COLUMNS)
    try:
        return build_parser(name).commands[name].format_help().rstrip()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def cli_reference() -> str:
    """One section per command, in the order of ``avemo --help``; each help text starts with its summary."""
    from avemo.cli import COMMANDS

    return "\n".join(f"## `avemo {name}`\n\n```text\n{command_help(name)}\n```\n" for name in COMMANDS)


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} lost its marker line {MARKER!r}: the CLI reference has nowhere to go")
    return markdown.replace(MARKER, cli_reference())
