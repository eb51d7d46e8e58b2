"""TLS settings: bad paths are refused where they are made, and a missing, unreadable or
malformed file is a ServeError naming it, raised before any socket is bound."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from support.certificates import Certificates

import streamkit
from streamkit import ServeError, TLSConfig, serve
from streamkit._run import main

pytestmark = pytest.mark.anyio


@pytest.fixture
def taken() -> Iterator[str]:
    """An address already listened on: a serve that bound before checking its TLS files
    would fail with 'cannot listen' instead of naming the file."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"certfile": 3, "keyfile": "k.pem"}, TypeError, "certfile must be a path.*3"),
        ({"certfile": "c.pem", "keyfile": None}, TypeError, "keyfile must be a path.*None"),
        ({"certfile": "c.pem", "keyfile": ""}, ValueError, "keyfile must not be empty"),
        (
            {"certfile": "c.pem", "keyfile": "k.pem", "client_ca": b"ca.pem"},
            TypeError,
            "client_ca must be a path",
        ),
        (
            {"certfile": "c.pem", "keyfile": "k.pem", "handshake_timeout": "5"},
            TypeError,
            "handshake_timeout must be a number of seconds, got str: '5'",
        ),
        (
            {"certfile": "c.pem", "keyfile": "k.pem", "handshake_timeout": 0},
            ValueError,
            "handshake_timeout",
        ),
        (
            {"certfile": "c.pem", "keyfile": "k.pem", "handshake_timeout": float("inf")},
            ValueError,
            "handshake_timeout",
        ),
    ],
)
def test_bad_options_are_refused_where_made(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        TLSConfig(**options)  # type: ignore[arg-type]


async def serve_with(tls: TLSConfig, bind: str) -> None:
    with anyio.fail_after(5):
        await serve(Starlette(), bind=bind, tls=tls, shutdown_trigger=anyio.sleep_forever)


async def test_a_missing_certificate_is_named_before_binding(
    certificates: Certificates, tmp_path: Path, taken: str
) -> None:
    missing = tmp_path / "nowhere.pem"
    tls = TLSConfig(certfile=missing, keyfile=certificates.server_key)
    with pytest.raises(ServeError, match=rf"certificate '{missing}'.*No such file"):
        await serve_with(tls, taken)


async def test_an_unreadable_key_is_named_before_binding(
    certificates: Certificates, tmp_path: Path, taken: str
) -> None:
    # A directory cannot be read as a file, even by root (for whom permissions do not count).
    tls = TLSConfig(certfile=certificates.server_cert, keyfile=tmp_path)
    with pytest.raises(ServeError, match=rf"cannot read the TLS key '{tmp_path}'"):
        await serve_with(tls, taken)


async def test_a_malformed_certificate_is_named(
    certificates: Certificates, tmp_path: Path, taken: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    tls = TLSConfig(certfile=garbage, keyfile=certificates.server_key)
    with pytest.raises(ServeError, match=rf"certificate '{garbage}' is not a PEM certificate"):
        await serve_with(tls, taken)


async def test_a_key_that_is_not_the_certificates_is_named(
    certificates: Certificates, taken: str
) -> None:
    tls = TLSConfig(certfile=certificates.server_cert, keyfile=certificates.client_key)
    with pytest.raises(ServeError, match=rf"key '{certificates.client_key}' cannot be loaded"):
        await serve_with(tls, taken)


async def test_a_missing_client_ca_is_named(
    certificates: Certificates, tmp_path: Path, taken: str
) -> None:
    missing = tmp_path / "ca.pem"
    tls = TLSConfig(
        certfile=certificates.server_cert, keyfile=certificates.server_key, client_ca=missing
    )
    with pytest.raises(ServeError, match=rf"client CA '{missing}'"):
        await serve_with(tls, taken)


def test_run_with_workers_names_the_file_before_binding(tmp_path: Path, taken: str) -> None:
    missing = tmp_path / "cert.pem"
    with pytest.raises(ServeError, match=rf"certificate '{missing}'"):
        streamkit.run(
            "support.plain_app:app",
            bind=taken,
            workers=2,
            tls=TLSConfig(certfile=missing, keyfile=missing),
            log_level=None,
        )


def test_run_refuses_a_tls_that_is_not_a_tls_config() -> None:
    with pytest.raises(TypeError, match=r"tls must be a streamkit\.TLSConfig.*, got 'cert\.pem'"):
        streamkit.run(Starlette(), tls="cert.pem", log_level=None)  # type: ignore[arg-type]


def test_the_command_line_names_the_file(
    tmp_path: Path, taken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "cert.pem"
    argv = ["run", "support.plain_app:app", "--bind", taken, "--log-level", "error"]
    code = main([*argv, "--certfile", str(missing), "--keyfile", str(missing)])
    assert code == 1
    assert f"certificate '{missing}'" in capsys.readouterr().err


def test_the_command_line_wants_certificate_and_key_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "support.plain_app:app", "--certfile", "cert.pem"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("usage: python -m streamkit run "), stderr
    assert "python -m streamkit run: error: --certfile and --keyfile go together" in stderr


async def test_an_encrypted_key_is_named_not_asked_for(
    certificates: Certificates, tmp_path: Path, taken: str
) -> None:
    # OpenSSL asked for the key's pass phrase on the terminal, where the command waited for
    # ever; with no terminal, it failed with "OSError: [Errno 22] Invalid argument", a
    # traceback that named no file.
    encrypted = tmp_path / "encrypted.pem"
    _write_encrypted(Path(certificates.server_key), encrypted)
    tls = TLSConfig(certfile=certificates.server_cert, keyfile=encrypted)
    message = rf"the TLS key '{encrypted}' is encrypted: give it unencrypted"
    with pytest.raises(ServeError, match=message):
        await serve_with(tls, taken)


def _write_encrypted(key_file: Path, target: Path) -> None:
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    target.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
