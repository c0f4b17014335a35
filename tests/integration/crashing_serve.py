"""`bits-wsgi serve`, whose worker SIGKILLs itself once at a chosen point of the commit.

    python -m tests.integration.crashing_serve before-commit|after-commit MARKER serve-args...

The first worker to reach the point creates MARKER and dies at once, as a crash would; gunicorn
starts a new worker, and later commits run normally.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from bits_wsgi.backends.filesystem import FilesystemBackend
from bits_wsgi.cli import main


def crash_once(marker: Path) -> None:
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def patch(point: str, marker: Path) -> None:
    commit = FilesystemBackend.commit

    def crashing_commit(self: FilesystemBackend, *args: Any, **kwargs: Any) -> None:
        if point == "before-commit":
            crash_once(marker)
        commit(self, *args, **kwargs)
        if point == "after-commit":  # published, and the record not yet saved as committed
            crash_once(marker)

    FilesystemBackend.commit = crashing_commit  # type: ignore[method-assign]


if __name__ == "__main__":
    patch(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
