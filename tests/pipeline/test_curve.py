"""CurveZMQ on tcp links: real peer processes with no key, an unlisted key and the wrong server key
are refused and counted; a listed peer gets through; a replay runs end to end over Curve."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from app.keys import generate
from pipeline.cli import main
from pipeline.config import ConfigError, CurveConfig, load_settings
from pipeline.messages import EosHeader
from pipeline.runner import replay_files
from pipeline.transport import CurveKeys, Receiver, close_context, pull_socket

REPO = Path(__file__).resolve().parents[2]
PEER = """
import sys, time, zmq
from pipeline.messages import EosHeader, encode_control
endpoint, name, public, secret, server = sys.argv[1:]
ctx = zmq.Context()
sock = ctx.socket(zmq.PUSH)
if public != "-":
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public.encode(), secret.encode(), server.encode()
sock.connect(endpoint)
for _ in range(30):  # ~3 s of trying: each attempt is a fresh handshake
    try:
        sock.send_multipart(encode_control(EosHeader(camera=name, kind="live", source="x")), flags=zmq.NOBLOCK)
    except zmq.Again:
        pass
    time.sleep(0.1)
ctx.destroy(linger=0)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _peer(endpoint: str, name: str, keys: tuple[bytes, bytes] | None, server: bytes) -> subprocess.Popen:
    public, secret = (k.decode() for k in keys) if keys else ("-", "-")
    return subprocess.Popen([sys.executable, "-c", PEER, endpoint, name, public, secret, server.decode()],
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_only_listed_peers_get_through_and_refusals_are_counted() -> None:
    server_pub, server_sec = zmq.curve_keypair()
    good, unlisted, stranger_server = zmq.curve_keypair(), zmq.curve_keypair(), zmq.curve_keypair()
    keys = CurveKeys(server_pub, server_sec, server_pub, frozenset({server_pub, good[0]}))
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ctx = zmq.Context()
    try:
        receiver = Receiver(pull_socket(ctx, endpoint, 10, curve=keys), 10.0, "test")
        peers = [
            _peer(endpoint, "good", good, server_pub),
            _peer(endpoint, "unlisted", unlisted, server_pub),  # a real key pair, not in allowed_keys
            _peer(endpoint, "nokey", None, server_pub),  # plain ZeroMQ, no Curve at all
            _peer(endpoint, "wrongserver", good, stranger_server[0]),  # listed key, wrong server key
        ]
        seen: set[str] = set()
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and any(p.poll() is None for p in peers):
            message = receiver.recv(100)
            if isinstance(message, EosHeader):
                seen.add(message.camera)
        for peer in peers:
            assert peer.wait(10) == 0
        receiver.recv(100)
        assert seen == {"good"}
        assert receiver.refused >= 3, "each refused peer's handshakes are counted"
    finally:
        close_context(ctx, 0)


def test_keys_generate_writes_a_private_secret_and_prints_only_the_public_key(tmp_path: Path, capsys) -> None:
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys"), "--name", "lot"]) == 0
    out = capsys.readouterr().out
    secret_file, public_file = tmp_path / "keys/lot.key_secret", tmp_path / "keys/lot.key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(secret_file)
    assert public.decode() in out and secret.decode() not in out
    assert zmq.auth.load_certificate(public_file) == (public, None)
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys"), "--name", "lot"]) == 1, "never overwrites a key pair"
    assert zmq.auth.load_certificate(secret_file) == (public, secret)


def test_tcp_off_loopback_requires_curve(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("transport: {kind: tcp, host: 0.0.0.0}\n")
    with pytest.raises(ConfigError, match="transport.*curve"):
        load_settings(config)
    config.write_text("transport: {kind: tcp, host: 0.0.0.0, curve: {enabled: true}}\n")
    with pytest.raises(ConfigError, match="key_file is required"):
        load_settings(config)
    with pytest.raises(ValueError, match="not a CurveZMQ public key"):
        CurveConfig(allowed_keys=["short"])


def test_a_missing_key_file_is_a_config_error(make_settings, tmp_path: Path) -> None:
    settings = make_settings(transport={"kind": "tcp", "curve": {"enabled": True, "key_file": "nope.key_secret"}})
    with pytest.raises(ConfigError, match="nope.key_secret"):
        CurveKeys.load(settings.transport.curve)


def test_replay_runs_end_to_end_over_curve(make_settings, two_mark_clip: Path, tmp_path: Path) -> None:
    _, secret_file, _ = generate(tmp_path / "keys", "node")
    settings = make_settings(transport={"kind": "tcp", "curve": {"enabled": True, "key_file": str(secret_file)}})
    report = replay_files(settings, [two_mark_clip], progress=False)
    assert report.ok and report.incidents == 2
    assert report.files[0].frames == report.files[0].expected
