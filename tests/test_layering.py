"""The import direction of docs/architecture.md, enforced."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bits_wsgi"

# module -> modules of the package it may import (backends name files and keys after
# protocol.SessionId's spellings)
ALLOWED = {
    "errors": set(),
    "protocol": {"errors"},
    "session": {"errors", "protocol"},
    "paths": {"errors", "protocol"},
    "wsgi.body": {"errors"},
    # notify, scan: plain values and rules, nothing that runs
    "config": {"protocol", "notify", "scan"},
    "scan": set(),
    "events": set(),
    "webhooks": set(),
    "server.per_process": set(),
    "server.sweeper": {"server.per_process"},
    "server.session_cap": set(),
    "server.tombstone_budget": set(),
    "wsgi.observe": {"escaping"},
    "wsgi.log_format": set(),
    "escaping": set(),
    "wsgi.metrics": {"events", "wsgi.observe"},
    "notify": {"protocol"},
    "_files": {"errors"},
    # The parts of a backend know only the contract (base) and the pure core; the composition
    # binds them; the backends that ship (filesystem, memory, redis) are compositions.
    "backends.base": {"paths", "session"},
    "backends.composed": {"backends.base", "errors", "paths", "session"},
    "backends.files": {"_files", "paths", "protocol"},
    "backends.waiting": {"errors"},
    "backends.sqlite_db": {"errors"},
    "backends.sqlite": {"backends.sqlite_db", "session"},
    "backends.sqlite_ledgers": {"backends.base", "backends.sqlite_db"},
    "backends.memory_ledgers": {"backends.base"},
    "backends.redis_ledgers": {"backends.base", "backends.redis_lease"},
    "backends.range_lock": {"backends.base", "backends.waiting"},
    "backends.redis_lease": {"backends.waiting", "errors"},
    "backends.s3": {"backends.base", "errors", "paths", "protocol"},
    "backends.filesystem": {
        "_files",
        "backends.base",
        "backends.composed",
        "backends.files",
        "backends.range_lock",
        "backends.sqlite",
        "backends.sqlite_db",
        "backends.sqlite_ledgers",
        "backends.waiting",
        "errors",
        "paths",
        "protocol",
        "session",
    },
    "backends.memory": {
        "_files",
        "backends.base",
        "backends.composed",
        "backends.memory_ledgers",
        "errors",
        "paths",
        "session",
    },
    "backends.redis": {
        "backends.base",
        "backends.composed",
        "backends.files",
        "backends.redis_ledgers",
        "backends.redis_lease",
        "errors",
        "session",
    },
}


def imports_of(module: str) -> set[str]:
    path = PACKAGE / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    depth = module.count(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".")[: depth + 1 - node.level]
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            found.update(
                n.removeprefix("bits_wsgi.") for n in names if n and n.startswith("bits_wsgi")
            )
    return found


def test_core_modules_import_only_downwards() -> None:
    for module, allowed in ALLOWED.items():
        assert imports_of(module) <= allowed, module


def test_nothing_below_the_middleware_knows_wsgi() -> None:
    # metrics.py serves the exposition as a WSGI app: WSGI by design (the in-process
    # notification target, which builds an environ, is in_process.py, beside the middleware)
    server = [f"server.{path.stem}" for path in (PACKAGE / "server").glob("*.py")]
    for module in [*(m for m in ALLOWED if m != "wsgi.metrics"), *server]:
        source = (PACKAGE / (module.replace(".", "/") + ".py")).read_text()
        assert "environ" not in source, module


def test_no_module_above_350_lines_without_a_reason_at_its_top() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 350:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            assert "Longer than 350 lines because" in docstring, path.relative_to(PACKAGE)
