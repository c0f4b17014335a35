"""Where an interrupted upload stands, kept in a file to resume on the next run."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


class ResumeState:
    """The session and offset of an upload of ``url``, valid while the file is unchanged."""

    def __init__(self, path: Path | None, url: str) -> None:
        self.path = path
        self.url = url

    def load(self, source: Path, stat: os.stat_result) -> tuple[str | None, int, str | None]:
        """(session id, offset, host) saved for this very file and URL, or nothing."""
        if self.path is None or not self.path.exists():
            return None, 0, None
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None, 0, None
        same = (
            isinstance(state, dict)
            and state.get("url") == self.url
            and state.get("file") == str(source.resolve())
            and state.get("size") == stat.st_size
            and state.get("mtime_ns") == stat.st_mtime_ns
        )
        if not same or not isinstance(state.get("session_id"), str):
            return None, 0, None
        offset = state.get("offset", 0)
        host = state.get("host")
        return (
            state["session_id"],
            offset if isinstance(offset, int) else 0,
            host if isinstance(host, str) else None,
        )

    def save(
        self, source: Path, stat: os.stat_result, session_id: str, offset: int, host: str
    ) -> None:
        if self.path is None:
            return
        state = {
            "url": self.url,
            "file": str(source.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "session_id": session_id,
            "offset": offset,
            "host": host,
        }
        staged = self.path.with_name(self.path.name + ".tmp")
        staged.write_text(json.dumps(state))
        os.replace(staged, self.path)

    def clear(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
