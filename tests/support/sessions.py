"""Reading and ageing the sessions a filesystem backend keeps under an upload directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bits_wsgi.backends import FilesystemBackend


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def records(upload_dir: Path) -> list[dict[str, Any]]:
    """Every stored session record, as JSON."""
    found = (upload_dir / "BITS-Sessions" / "Requests").glob("*/session.json")
    return [json.loads(p.read_text()) for p in found]


def age_sessions(upload_dir: Path, seconds: float) -> None:
    """Move every session's last activity ``seconds`` into the past."""
    backend = FilesystemBackend(upload_dir)
    for session_id in backend.session_ids():
        record = backend.load(session_id)
        assert record is not None
        record.last_activity -= seconds
        backend.save(record)
