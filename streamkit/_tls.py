"""TLS for :func:`streamkit.serve`: the certificate, its key, and the CA that client
certificates must chain to.

Browsers speak HTTP/2 only over TLS and agree on it by ALPN, so a server given a certificate
offers ``h2`` first, then ``http/1.1``. Every file is loaded here, before the socket is bound:
a missing, unreadable or malformed one is a :class:`~streamkit.ServeError` naming it, at
start-up, not a handshake that fails for each client later.

A connection holds a descriptor, and on hypercorn's trio worker a task the shutdown waits
for, from its accept on. hypercorn gives a handshake 60 s by default, so a client that opens
TCP and never sends its ClientHello, or stops halfway through, held both for a minute, and
a few thousand of them ran the process out of descriptors. ``handshake_timeout`` bounds it;
once the handshake is done, hypercorn's ``keep_alive_timeout`` bounds an unfinished request.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from ._checks import check_duration, check_path
from ._exceptions import ServeError

__all__ = ["HANDSHAKE_TIMEOUT", "TLSConfig", "apply_tls", "check_tls"]

#: What a server with a certificate offers by ALPN, in order of preference.
ALPN_PROTOCOLS = ("h2", "http/1.1")

Path = str | os.PathLike[str]


#: Seconds a TLS handshake may take from the connection's accept, unless told otherwise.
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """A certificate and key to serve HTTPS with, HTTP/2 included (agreed by ALPN).

    :param certfile: the server's certificate chain, PEM: its own certificate first, then
        any intermediates.
    :param keyfile: the certificate's private key, PEM, unencrypted.
    :param client_ca: PEM certificates of the CAs that sign client certificates; when given,
        every client must present a certificate signed by one of them (mutual TLS).
    :param handshake_timeout: seconds from a connection's accept to its TLS handshake being
        done, after which the connection is closed: a client that never sends its ClientHello,
        or stalls in the middle of the handshake, holds a descriptor no longer. It replaces the
        ``ssl_handshake_timeout`` of a hypercorn ``Config`` given to :func:`~streamkit.serve`.
    :raises TypeError: a path is neither ``str`` nor :class:`os.PathLike`, or
        *handshake_timeout* is not a number.
    :raises ValueError: a path is empty, or *handshake_timeout* is not a positive, finite
        number.
    """

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    def __post_init__(self) -> None:
        check_path("certfile", self.certfile)
        check_path("keyfile", self.keyfile)
        check_path("client_ca", self.client_ca, optional=True)
        check_duration("handshake_timeout", self.handshake_timeout)


def check_tls(value: object) -> None:
    """Refuse *value* unless it is ``None`` or a :class:`TLSConfig`.

    :raises TypeError: it is something else (a path, say).
    """
    if value is not None and not isinstance(value, TLSConfig):
        raise TypeError(
            f"tls must be a streamkit.TLSConfig(certfile=..., keyfile=...), got {value!r}"
        )


def _readable(what: str, path: Path) -> str:
    name = os.fspath(path)
    try:
        with open(name, "rb"):
            pass
    except OSError as exc:
        raise ServeError(f"cannot read the TLS {what} {name!r}: {exc.strerror or exc}") from exc
    return name


def _check_loads(tls: TLSConfig) -> tuple[str, str, str | None]:
    """Load every file once into a throwaway context, naming the one that fails."""
    certfile = _readable("certificate", tls.certfile)
    keyfile = _readable("key", tls.keyfile)
    client_ca = None if tls.client_ca is None else _readable("client CA", tls.client_ca)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A certificate parses as a trust anchor too: this tells a bad certificate file
        # from a bad key, which load_cert_chain reports alike.
        probe.load_verify_locations(cafile=certfile)
    except ssl.SSLError as exc:
        raise ServeError(
            f"the TLS certificate {certfile!r} is not a PEM certificate: {exc}"
        ) from exc

    def ask_for_the_pass_phrase() -> bytes:
        # Without this, OpenSSL asks on the terminal, where the server waits for ever, or
        # with none fails with OSError (EINVAL). hypercorn takes no pass phrase.
        raise ServeError(f"the TLS key {keyfile!r} is encrypted: give it unencrypted")

    try:
        probe.load_cert_chain(certfile, keyfile, password=ask_for_the_pass_phrase)
    except ssl.SSLError as exc:
        raise ServeError(
            f"the TLS key {keyfile!r} cannot be loaded for the certificate {certfile!r} "
            f"(not a PEM private key, encrypted, or not the certificate's key): {exc}"
        ) from exc
    if client_ca is not None:
        try:
            probe.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise ServeError(
                f"the TLS client CA {client_ca!r} is not a PEM certificate: {exc}"
            ) from exc
    return certfile, keyfile, client_ca


def apply_tls(tls: TLSConfig, config: Any) -> None:
    """Check *tls*'s files and set them on the hypercorn ``Config`` *config*.

    :raises ServeError: a file is missing, unreadable or not what it should be.
    """
    certfile, keyfile, client_ca = _check_loads(tls)
    config.certfile = certfile
    config.keyfile = keyfile
    config.alpn_protocols = list(ALPN_PROTOCOLS)
    config.ssl_handshake_timeout = tls.handshake_timeout
    if client_ca is not None:
        config.ca_certs = client_ca
        config.verify_mode = ssl.CERT_REQUIRED
    try:
        config.create_ssl_context()  # what hypercorn will do, now rather than after binding
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ServeError(
            f"cannot make a TLS context from {certfile!r} and {keyfile!r}: {exc}"
        ) from exc
