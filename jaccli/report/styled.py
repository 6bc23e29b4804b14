"""A line of text in styled pieces, without rich: plain for pipes and files, rich for terminals.

:mod:`jaccli.report.pictures` builds its lines from these, so text output to a pipe never imports
rich (whose import costs more than a small command's derivative); a terminal gets them as
``rich.text.Text`` through ``__rich__``.
"""

from __future__ import annotations

from typing import Any


class Text:
    """``Text("label ")``, then ``.append(text, style)``; ``.plain`` is the text alone."""

    def __init__(self, text: str = "", style: Any = None):
        self.pieces: list[tuple[str, Any]] = [(text, style)] if text else []

    def append(self, text: str, style: Any = None) -> Text:
        self.pieces.append((text, style))
        return self

    @property
    def plain(self) -> str:
        return "".join(text for text, _ in self.pieces)

    def __str__(self) -> str:
        return self.plain

    def __rich__(self) -> Any:
        from rich.text import Text as RichText

        line = RichText()
        for text, style in self.pieces:
            line.append(text, style)
        return line
