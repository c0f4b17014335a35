"""Client-chosen text made safe for a log line or a terminal (PROTOCOL.md §9.3, D23)."""

from __future__ import annotations

import json
import re

#: Printable ASCII but the quote and the backslash: written as it is.
_PLAIN = re.compile(r"[!#-\[\]-~]+")


def client_text(text: str, limit: int | None = None) -> str:
    """Client-chosen text as it may reach a log line or a terminal (PROTOCOL.md §9.3): as it is
    when plain printable ASCII, else a JSON string, whose escapes leave no control character,
    line or paragraph separator, or bidirectional override in the output."""
    text = text[:limit]
    if not text:
        return "-"
    return text if _PLAIN.fullmatch(text) else json.dumps(text)
