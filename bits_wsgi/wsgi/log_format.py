"""``JsonFormatter``: one JSON object per log line, with a BITS packet's fields as its keys.

For log pipelines that parse JSON rather than ``key=value``. Plug it in where the logging is
configured, for example gunicorn's ``logconfig_dict`` (``examples/gunicorn.conf.py`` with
``BITS_LOG_FORMAT=json``) or Django's ``LOGGING``::

    "formatters": {"json": {"()": "bits_wsgi.wsgi.log_format.JsonFormatter"}}

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; a packet's line
also has the fields of :class:`~bits_wsgi.wsgi.observe.PacketRecord` (``record.bits``), and a
line with an exception its traceback as ``exception``. Client-chosen text is escaped by the
JSON encoding itself.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bits = getattr(record, "bits", None)
        if isinstance(bits, dict):
            line.update({key: value for key, value in bits.items() if key not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)
