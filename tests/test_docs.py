"""The docs tell the truth: their commands exist, their code compiles, their links resolve.

What the commands do is exercised by the tests they mirror: `make serve` and `bits-wsgi serve`
(tests/integration/test_serve.py), `bits-wsgi upload` (test_upload_cli.py), the examples under
gunicorn and nginx (test_examples.py), `sessions` and `cleanup` (tests/test_cli.py).
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bits_wsgi.cli import build_parser

PROJECT = Path(__file__).resolve().parents[1]
DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def blocks(language: str) -> list[tuple[Path, str]]:
    found = []
    for doc in DOCS:
        for lang, body in BLOCK.findall(doc.read_text()):
            if lang == language:
                found.append((doc, body))
    return found


def shell_lines() -> list[tuple[Path, str]]:
    lines = []
    for doc, body in blocks("sh"):
        joined = body.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append((doc, line))
    return lines


def test_python_blocks_compile() -> None:
    assert blocks("python")
    for doc, body in blocks("python"):
        try:
            ast.parse(body)
        except SyntaxError as exc:
            pytest.fail(f"{doc.name}: {exc}\n{body}")


def test_bits_wsgi_commands_parse() -> None:
    parser = build_parser()
    commands = 0
    for doc, line in shell_lines():
        for part in line.split("&&"):
            words = shlex.split(part)
            words = [w for w in words if "=" not in w or w.startswith("-")]  # VAR=value prefixes
            if not words or not words[0].endswith("bits-wsgi"):
                continue
            if any(w.startswith("[") for w in words):
                continue  # a usage synopsis, not a command
            commands += 1
            try:
                parser.parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{doc.name}: {line}")
    assert commands >= 6  # the extraction found the documented commands


def test_make_targets_exist() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (PROJECT / "Makefile").read_text(), re.M))
    for doc, line in shell_lines():
        words = shlex.split(line)
        if words and words[0] == "make":
            target = next((w for w in words[1:] if "=" not in w), "")
            assert target in targets, f"{doc.name}: {line}"


def test_gunicorn_commands_of_the_examples_are_valid() -> None:
    checked = 0
    for doc, line in shell_lines():
        words = [w for w in shlex.split(line) if "=" not in w.split("-")[0]]
        if not words or words[0] != "gunicorn" or "examples/gunicorn.conf.py" not in line:
            continue
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        result = subprocess.run(
            [gunicorn, *words[1:], "--check-config"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{doc.name}: {line}\n{result.stderr}"
        checked += 1
    assert checked >= 2


def test_relative_links_resolve() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_every_serve_flag_is_documented() -> None:
    text = (PROJECT / "docs" / "configuration.md").read_text() + (PROJECT / "README.md").read_text()
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    for action in serve._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert flag in text, f"{flag} is not documented"


def test_security_controls_point_at_existing_tests() -> None:
    text = (PROJECT / "docs" / "security.md").read_text()
    references = re.findall(r"`((?:tests|bits_wsgi)/[\w/]+\.py)::([\w:]+)`", text)
    expanded = []
    for path, names in references:
        expanded.append((path, names.split("::")[-1]))
    # the ", `::other`" shorthand refers to the file named before it
    for match in re.finditer(r"`((?:tests|bits_wsgi)/[\w/]+\.py)::\w+`((?:, `::\w+`)+)", text):
        for name in re.findall(r"`::(\w+)`", match.group(2)):
            expanded.append((match.group(1), name))
    assert len(expanded) >= 20
    for path, name in expanded:
        source = (PROJECT / path).read_text()
        assert f"def {name}(" in source, f"docs/security.md names {path}::{name}, which is gone"


def test_every_option_in_the_configuration_page_is_a_real_flag() -> None:
    """docs/configuration.md's table names each option with its flag; each is one of
    UploadDirectory's fields and a flag of `serve` with that field's default, or says why not."""
    from dataclasses import MISSING, fields

    from bits_wsgi.config import UploadDirectory

    text = (PROJECT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \(([^)]*)\) \|", text, flags=re.MULTILINE)
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {flag: action for action in serve._actions for flag in action.option_strings}
    documented = {name for name, _ in rows}
    assert documented == {item.name for item in fields(UploadDirectory)}
    for name, how in rows:
        field = next(item for item in fields(UploadDirectory) if item.name == name)
        if how.startswith("`--"):
            flag = how.strip("`")
            assert flag in flags, f"{name}: {flag} is no flag of serve"
            assert flags[flag].default == field.default, f"{flag}: another default"
        else:
            assert field.default is MISSING or not field.metadata.get("flag", True), name


def test_serve_help_shows_every_default() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    for action in serve._actions:
        if action.option_strings and "--help" not in action.option_strings:
            assert action.help and "default" in action.help, action.option_strings[0]
