"""MkDocs hook: ``\\|`` inside a code span of a table row becomes ``|``.

GitHub needs a pipe inside a table cell escaped even within backticks (`` `a\\|b` ``) and shows it as ``a|b``;
Python-Markdown keeps the backslash inside code but already reads a bare pipe within backticks as text. So the
pages keep GitHub's escape, and this hook removes it before MkDocs renders them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

CODE_SPAN = re.compile(r"`[^`\n]*`")


def unescape_table_pipes(markdown: str) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and "\\|" in line:
            lines[i] = CODE_SPAN.sub(lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    return unescape_table_pipes(markdown)
