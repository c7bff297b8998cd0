"""CURVE key pairs: the service's, kept in --state-dir, and each tenant's probes', derived from its token.

CURVE authenticates a connection by its public key, not by a token. Deriving the probe's key pair
from its probe token (the secret key is a hash of the token) makes the handshake prove the token:
only a holder of the token has the secret key whose public key the registry names, and the token
itself never crosses the wire, not even encrypted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

#: The file in --state-dir holding the service's key pair (public line, then secret line, hex).
SERVICE_KEY_FILE = "service.key"
#: ZeroMQ's ZAP domain of the service's sockets; with ZAP_ENFORCE_DOMAIN it makes ZAP mandatory.
ZAP_DOMAIN = "scope"


@dataclass(frozen=True)
class KeyPair:
    """Keys as 64 hex digits: what people copy and paste (`--service-key`) without shell quoting, where
    ZeroMQ's own Z85 text is full of `$`, `&` and `<`."""

    public: str
    secret: str


def probe_keys(probe_token: str) -> KeyPair:
    """The key pair of every probe holding `probe_token`: the same on every host and every start."""
    secret = hashlib.sha256(b"scope probe curve key\0" + probe_token.encode()).digest()
    return KeyPair(public_of(secret), secret.hex())


def public_of(secret: bytes) -> str:
    return z85.decode(zmq.curve_public(z85.encode(secret))).hex()


def service_keys(state_dir: Path) -> KeyPair:
    """The service's key pair, made on first use (readable by its owner only)."""
    path = state_dir / SERVICE_KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        secret = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{public_of(secret)}\n{secret.hex()}\n")
    public_text, secret_text = path.read_text().split()[:2]
    return KeyPair(public_text, secret_text)


def parse_key(text: str) -> str:
    """A public key as given on a command line (64 hex digits) in canonical form; ValueError if it is none."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(
            f"invalid key {text[:80]!r}: 64 hex digits expected (the service_key `scope tenants add` printed)"
        )
    return key.hex()


def serve_curve(socket: zmq.Socket[Any], keys: KeyPair) -> None:
    """Make `socket` a CURVE server whose every connection ZAP must admit.

    ZAP_ENFORCE_DOMAIN makes a missing authenticator (nothing bound at inproc://zeromq.zap.01) refuse
    every connection, where libzmq would otherwise let every client in."""
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_SECRETKEY, bytes.fromhex(keys.secret))
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def connect_curve(socket: zmq.Socket[Any], keys: KeyPair, server_public: str) -> None:
    """Make `socket` a CURVE client with `keys` that talks only to the server holding `server_public`."""
    socket.setsockopt(zmq.CURVE_SERVERKEY, bytes.fromhex(server_public))
    socket.setsockopt(zmq.CURVE_PUBLICKEY, bytes.fromhex(keys.public))
    socket.setsockopt(zmq.CURVE_SECRETKEY, bytes.fromhex(keys.secret))
