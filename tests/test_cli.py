"""The command line: argument handling, configuration errors, and `cleanup`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bits_wsgi import BITSMiddleware
from bits_wsgi.cli import build_app, build_parser, main

from .conftest import BitsClient, fallback_app
from .support.sessions import edit_records, per_session_files, records


def age(upload_dir: Path, seconds: float) -> None:
    edit_records(
        upload_dir, lambda record: record.update(last_activity=record["last_activity"] - seconds)
    )


def test_cleanup_removes_expired_sessions_and_keeps_live_ones(tmp_path: Path) -> None:
    app = BITSMiddleware(fallback_app, tmp_path)
    stale = BitsClient(app, path="/stale.bin")
    stale.create()
    stale.fragment(b"abc", 0, 10)
    age(tmp_path, 7200)
    live = BitsClient(app, path="/live.bin")
    live.create()
    result = subprocess.run(
        [sys.executable, "-m", "bits_wsgi", "cleanup", str(tmp_path), "--older-than", "3600"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "removed 1 expired session"
    assert stale.fragment(b"def", 3, 10).status_int == 500
    assert live.fragment(b"abc", 0, 3).status_int == 200


def test_cleanup_removes_old_tombstones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = BITSMiddleware(fallback_app, tmp_path)
    client = BitsClient(app)
    client.upload(b"x")
    client.close()
    assert main(["cleanup", str(tmp_path), "--older-than", "0"]) == 0
    assert capsys.readouterr().out.strip() == "removed 0 expired sessions"  # kept a day
    age(tmp_path, 2 * 86_400)
    assert main(["cleanup", str(tmp_path), "--older-than", "0"]) == 0
    assert capsys.readouterr().out.strip() == "removed 1 expired session"
    assert per_session_files(tmp_path) == [] and records(tmp_path) == []


def test_cleanup_of_a_missing_root_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cleanup", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_invalid_configuration_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path), "--max-fragment-size", "10"]) == 2
    assert "max_fragment_size" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--user", "nopassword"]) == 2
    assert "NAME:PASSWORD" in capsys.readouterr().err


def test_serve_options_reach_the_upload_directory(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "serve",
            str(tmp_path),
            "--prefix",
            "/in",
            "--allow-overwrites",
            "--max-upload-size",
            "1000",
            "--session-limit",
            "0",
            "--host-id",
            "node1",
            "--commit-on",
            "close",
        ]
    )
    app = build_app(args)
    assert isinstance(app, BITSMiddleware)
    directory = app.servers[0].directory
    assert directory.prefix == "/in/"
    assert directory.allow_overwrites and directory.max_upload_size == 1000
    assert directory.session_limit is None and directory.host_id == "node1"
    assert directory.commit_on == "close"


def test_sessions_lists_active_sessions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = BITSMiddleware(fallback_app, tmp_path)
    alice = BitsClient(app, path="/dumps/a.dmp", user="alice")
    alice.create()
    alice.fragment(b"x" * 100, 0, 1000)
    done = BitsClient(app, path="/b.bin")
    done.upload(b"y")
    done.close()
    age(tmp_path, 100)  # idle for 100 s (the tombstone of done.bin too)
    assert main(["sessions", str(tmp_path), "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["id"] == alice.session_id
    assert (row["owner"], row["destination"], row["received"], row["total"]) == (
        "alice",
        "dumps/a.dmp",
        100,
        1000,
    )
    assert row["state"] == "receiving" and 100 <= row["idle_seconds"] <= 160
    assert main(["sessions", str(tmp_path), "--all"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SESSION", "OWNER", "STATE"]
    assert any("100/1000" in line and "dumps/a.dmp" in line for line in table)
    assert any("closed" in line for line in table)


def test_sessions_of_a_directory_without_sessions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sessions", str(tmp_path)]) == 2
    assert "holds no sessions" in capsys.readouterr().err


def test_every_option_is_a_serve_flag(tmp_path: Path) -> None:
    """The four options that had no flag, and the switches' --no- forms."""
    args = build_parser().parse_args(
        [
            "serve",
            str(tmp_path),
            "--lock-timeout",
            "2.5",
            "--fsync",
            "always",
            "--allow-method-override",
            "--error-headers",
            "BITS-Error-Code",
            "--no-allow-overwrites",
            "--max-sessions",
            "0",
        ]
    )
    app = build_app(args)
    assert isinstance(app, BITSMiddleware)
    directory = app.servers[0].directory
    assert directory.lock_timeout == 2.5 and directory.fsync == "always"
    assert directory.allow_method_override and not directory.allow_overwrites
    assert directory.error_headers == ("BITS-Error-Code",)
    assert directory.max_sessions is None


def test_serve_defaults_are_upload_directory_defaults(tmp_path: Path) -> None:
    from bits_wsgi import UploadDirectory

    app = build_app(build_parser().parse_args(["serve", str(tmp_path)]))
    assert isinstance(app, BITSMiddleware)
    assert app.servers[0].directory == UploadDirectory(upload_dir=tmp_path)


def test_every_option_says_what_it_does_and_its_default() -> None:
    import argparse

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help and "default" in action.help.lower(), (name, action.option_strings)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auth", "negotiate", "--user", "a:b"], "exclude each other"),
        (["--identity-header", "X-Remote-User", "--user", "a:b"], "exclude each other"),
        (["--identity-header", "X-Remote-User", "--auth", "negotiate"], "exclude each other"),
        (["--trusted-proxy", "10.0.0.1"], "--trusted-proxy needs --identity-header"),
        (["--keytab", "/etc/krb5.keytab"], "need --auth negotiate"),
        (["--identity-header", "X-Remote-User", "--trusted-proxy", "nowhere"], "--trusted-proxy"),
        (["--auth", "negotiate", "--keytab", "/nonexistent.keytab"], "not a readable file"),
    ],
)
def test_authentication_options_refuse_what_cannot_work(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_app(build_parser().parse_args(["serve", str(tmp_path), *flags]))


def test_identity_header_puts_the_trusted_proxy_in_front(tmp_path: Path) -> None:
    from bits_wsgi.wsgi.proxy_identity import ProxyIdentity

    flags = ["--identity-header", "X-Remote-User", "--trusted-proxy", "10.0.0.0/8"]
    app = build_app(build_parser().parse_args(["serve", str(tmp_path), *flags]))
    assert isinstance(app, ProxyIdentity)
    assert [str(network) for network in app.proxies] == ["10.0.0.0/8"]
    assert isinstance(app.app, BITSMiddleware)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (
            ["--auth", "negotiate", "--keytab", "/etc/bits/http.keytab"],
            "Negotiate: Kerberos (HTTP, keytab /etc/bits/http.keytab), bound to the connection",
        ),
        (
            ["--auth", "negotiate", "--ntlm-users", "users", "--server", "granian"],
            "Kerberos (HTTP, keytab of the system) and NTLM (users in users), per request "
            "(granian: no connection-bound identity)",
        ),
        (
            ["--identity-header", "X-Remote-User", "--trusted-proxy", "10.0.0.5"],
            "the identity in X-Remote-User from the proxy at 10.0.0.5",
        ),
    ],
)
def test_the_banner_says_who_may_send(tmp_path: Path, flags: list[str], words: str) -> None:
    from bits_wsgi.cli.serve import banner

    assert words in banner(build_parser().parse_args(["serve", str(tmp_path), *flags]))
