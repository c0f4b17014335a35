"""Every command the docs show is run by a test, or says why it cannot be run here; every flag
docs/configuration.md names is a real one.

The commands are the lines of the ``sh`` blocks of README.md and docs/*.md. Each must match one
pattern below, which names the test that runs it (the test must exist), or the reason it runs
nowhere here (a package registry, a placeholder, a long benchmark). A command added to the docs
without either fails this check.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bits_wsgi.cli import build_parser

PROJECT = Path(__file__).resolve().parents[1]
DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]

NOT_RUNNABLE = "not runnable here"
#: (pattern of a command, the test that runs it as ``path::name``, or why it is not run)
QUICKSTART = "tests/integration/test_quickstart.py::test_the_quickstart_as_written"
EXAMPLES = "tests/integration/test_examples.py::test_example_under_gunicorn"
BENCHMARKS = f"{NOT_RUNNABLE}: benchmarks and soaks are measured, never part of make test"
EXERCISED: list[tuple[str, str]] = [
    (
        r"make serve",
        "tests/integration/test_status_browser.py"
        "::test_make_serve_then_a_browser_sees_an_upload_progress",
    ),
    (r"make serve HOST=0\.0\.0\.0 .*", f"{NOT_RUNNABLE}: test servers listen on loopback only"),
    (r"make test", "CI runs it: .ci/run"),
    (r"make bench(-quick)?", BENCHMARKS),
    (r"(\.venv/bin/)?python (-m benchmarks\.|benchmarks/)\S+.*", BENCHMARKS),
    (r"AWS_ENDPOINT_URL=\S+ .* -m benchmarks\.soak .*", BENCHMARKS),
    (r"pip install .*", f"{NOT_RUNNABLE}: no package index here; make test installs the extras"),
    (r"git clone <this repository> bits_wsgi|cd bits_wsgi", f"{NOT_RUNNABLE}: a placeholder"),
    (r"cd examples/django_site", EXAMPLES),
    (r"BITS_UPLOAD_DIR=\./uploads gunicorn -c \.\./gunicorn\.conf\.py \S+", EXAMPLES),
    (r"(BITS_UPLOAD_DIR=\./uploads )?gunicorn -c examples/gunicorn\.conf\.py \S+", EXAMPLES),
    (r"gunicorn --worker-class gthread .* mysite\.wsgi", EXAMPLES),
    (r"head -c \d+ /dev/urandom > sample\.bin", QUICKSTART),
    (r"cmp sample\.bin uploads/samples/sample\.bin && echo identical", QUICKSTART),
    (r"(\.venv/bin/)?bits-wsgi (upload|sessions|cleanup|passwd) .*", QUICKSTART),
    (r"\.venv/bin/bits-wsgi serve \./uploads --users-file users", QUICKSTART),
    (
        r"bits-wsgi serve ROOT .*|\[--.*",
        "tests/test_docs_commands.py::test_the_synopsis_names_real_flags",
    ),
    (
        r"bits-wsgi serve /srv/uploads --host 0\.0\.0\.0 --port 443 --certfile \S+ --keyfile \S+",
        "tests/integration/test_serve_tls.py::test_an_upload_over_tls_arrives_byte_identical",
    ),
    (
        r"bits-wsgi serve /srv/uploads --host 0\.0\.0\.0 --auth negotiate --keytab \S+ "
        r"--machine-names",
        "tests/integration/test_negotiate.py::test_ntlm_and_kerberos_give_a_machine_one_identity",
    ),
    (
        r"bits-wsgi serve /srv/uploads --port 8000 --identity-header X-Remote-User",
        "tests/integration/test_apache_negotiate.py"
        "::test_apache_authenticates_and_the_server_believes_only_apache",
    ),
    (
        r"bits-wsgi upload --negotiate .*",
        "tests/integration/test_negotiate.py::test_the_linux_client_uploads_with_its_kerberos_ticket",
    ),
    (
        r'kadmin\.local -q "(addprinc -randkey|ktadd -k \S+) HTTP/bits\.example\.com"',
        f"{NOT_RUNNABLE}: needs the realm's own KDC; tests/support/kerberos.py does the same",
    ),
    (
        r"head -c 32 /dev/urandom \| base64 > webhook\.secret",
        f"{NOT_RUNNABLE}: the tests write their own secret file",
    ),
    (
        r"bits-wsgi serve \./uploads --webhook \S+ --webhook-secret-file \S+",
        "tests/integration/test_webhooks_serve.py::test_serve_delivers_each_upload_once",
    ),
    (
        r"bits-wsgi serve /srv/uploads --scan-yara \S+ --quarantine-dir \S+",
        "tests/integration/test_scan_serve.py::test_serve_scans_with_yara_and_quarantines",
    ),
    (
        r'bits-wsgi serve /srv/uploads --scan-command "clamdscan .*',
        f"{NOT_RUNNABLE}: no ClamAV daemon here; tests/test_scan_gate.py runs a fake command",
    ),
    (
        r"bits-wsgi serve /srv/uploads --users-file users --quota-bytes-per-day \d+",
        "tests/test_quotas.py::test_past_the_quota_fragments_wait_for_the_next_day",
    ),
    (
        r"bits-wsgi (deliver|events) (/srv/uploads|ROOT).*",
        "tests/test_webhooks.py::test_dead_letters_are_listed_and_replayed_by_the_cli",
    ),
    (
        r"curl -sS -X BITS_POST .*",
        "tests/integration/test_curl_recipe.py::test_the_curl_recipe_uploads_packet_by_packet",
    ),
]


def doc_commands() -> list[tuple[str, str]]:
    """(document, command) for every line of every sh block, continuations joined."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command and not command.startswith("#"):
                    found.append((path.name, re.sub(r"\s+", " ", command)))
    return found


@pytest.mark.parametrize(("document", "command"), doc_commands())
def test_every_docs_command_is_exercised_or_says_why_not(document: str, command: str) -> None:
    matches = [where for pattern, where in EXERCISED if re.fullmatch(pattern, command)]
    assert matches, f"{document}: no test runs `{command}` (tests/test_docs_commands.py)"


def test_the_tests_named_exist() -> None:
    for _, where in EXERCISED:
        if "::" not in where:
            continue
        path, name = where.split("::")
        assert f"def {name}(" in (PROJECT / path).read_text(), where


def _real_flags() -> set[str]:
    parser = build_parser()
    flags = {flag for action in parser._actions for flag in action.option_strings}
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for command in commands.choices.values():
        flags.update(flag for action in command._actions for flag in action.option_strings)
    return flags


def test_every_flag_in_the_configuration_page_is_real() -> None:
    text = (PROJECT / "docs" / "configuration.md").read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w-])", text))
    assert named, "no flags found"
    assert named <= _real_flags(), sorted(named - _real_flags())


def test_the_synopsis_names_real_flags() -> None:
    """The README's usage block: its flags exist, and every serve flag is in it."""
    readme = (PROJECT / "README.md").read_text()
    block = readme[readme.index("bits-wsgi serve ROOT") :]
    block = block[: block.index("```")]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w-])", block))
    assert named <= _real_flags(), sorted(named - _real_flags())
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve = {
        flag
        for action in commands.choices["serve"]._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help" and not flag.startswith("--no-")
    }
    assert serve <= named, sorted(serve - named)
