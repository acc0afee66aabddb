"""``scratchwatch keys generate``: a CurveZMQ key pair for the tcp links between hosts.

The secret file is created 0600 (under a 077 umask, so it is never readable by others, not even
for an instant) and never printed; the public key is printed to paste into the peers' configs.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq.auth


class KeyExistsError(FileExistsError):
    """Refused to overwrite a key pair: peers would lose trust in this node silently."""


def generate(folder: Path, name: str) -> tuple[Path, Path, str]:
    """Write ``name.key`` (public) and ``name.key_secret`` (0600); return both paths and the public key."""
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise KeyExistsError(f"{path} exists: remove it first or choose another --name")
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.umask(0o077)
    try:
        zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(previous)
    public_file.chmod(0o644)
    public, _ = zmq.auth.load_certificate(public_file)
    return public_file, secret_file, public.decode()
