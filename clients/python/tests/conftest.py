"""Fixtures: real ``coremq`` processes on 127.0.0.1.

The binary is ``$COREMQ_BIN``, else ``$CARGO_TARGET_DIR/debug/coremq``, else
``target/debug/coremq`` of this repository. Each broker gets a temp dir with
its config (``port = 0``) and is started with ``--ready-file``; the bound
addresses are read from that file, as tests/common/mod.rs does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))  # the package, without installing it

START_TIMEOUT = 20.0
SECRET = "coremq-python-test-secret-0123456789-abcdef"


def _bin(name: str) -> Path:
    env = os.environ.get("COREMQ_BIN")
    if env:
        p = Path(env)
        return p if name == "coremq" else p.with_name(name)
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target) if target else REPO / "target"
    return base / "debug" / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One broker process; ``restart()`` keeps its config and ports."""

    def __init__(self, shards: int = 1, extra: Optional[Dict[str, str]] = None) -> None:
        self.bin = _bin("coremq")
        if not self.bin.exists():
            pytest.fail("coremq binary not found at %s (build it with `cargo build --bin coremq` "
                        "or set COREMQ_BIN)" % self.bin)
        self.dir = Path(tempfile.mkdtemp(prefix="coremq-py-"))
        self.shards = shards
        self.extra = dict(extra or {})
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.ready: Dict = {}
        self._write_config()

    def _write_config(self) -> None:
        pairs = {"address": "127.0.0.1", "port": str(self.port), "shards": str(self.shards),
                 "node_name": "pytest", "log_level": "INFO", "log_file": "stdout"}
        pairs.update(self.extra)
        text = "[CoreMQ]\n" + "".join("%s = %s\n" % kv for kv in pairs.items())
        text += "\n[CoreWS]\nenabled = false\naddress = 127.0.0.1\nport = 0\n"
        (self.dir / "coremq.conf").write_text(text)

    def start(self) -> "Broker":
        ready = self.dir / "ready.json"
        if ready.exists():
            ready.unlink()
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("COREMQ_") or k.startswith("COREWS_"))}
        self.log = open(self.dir / "broker.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.bin), "--config", str(self.dir / "coremq.conf"), "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.ready = json.loads(ready.read_text())
                break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                pytest.fail("broker exited with %s before it was ready:\n%s"
                            % (self.proc.returncode, self.logs()))
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("broker not ready within %ss:\n%s" % (START_TIMEOUT, self.logs()))
            time.sleep(0.02)
        if self.ready.get("tcp"):
            self.port = int(self.ready["tcp"].rsplit(":", 1)[1])
        return self

    @property
    def tls_port(self) -> int:
        return int(self.ready["tls"].rsplit(":", 1)[1])

    def logs(self) -> str:
        return self.logs_all()[-4000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same port(s).

        The old process's listening sockets can outlive it for a moment (its
        io_uring ring is torn down after it is reaped): a start that fails
        with "already in use" is tried again, for at most 5 s."""
        self.stop()
        self._write_config()  # now with the bound port instead of 0
        deadline = time.monotonic() + 5
        while True:
            mark = len(self.logs_all())
            try:
                self.start()
                return
            except pytest.fail.Exception:
                if ("already in use" not in self.logs_all()[mark:]
                        or time.monotonic() > deadline):
                    raise
            time.sleep(0.05)

    def logs_all(self) -> str:
        try:
            return (self.dir / "broker.log").read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def make_broker() -> Iterator:
    made: List[Broker] = []

    def make(shards: int = 1, **extra: str) -> Broker:
        b = Broker(shards, extra)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.cleanup()


@pytest.fixture(params=[1, 3], ids=["1shard", "3shards"])
def broker(request, make_broker) -> Broker:
    """A plain broker, with one and with several shards."""
    return make_broker(request.param)


# -- access control ---------------------------------------------------------


def argon2_hash(password: str) -> str:
    cli = _bin("coremq-cli")
    if not cli.exists():
        pytest.fail("coremq-cli not found at %s (cargo build --bin coremq-cli)" % cli)
    out = subprocess.run([str(cli), "passwd", "--stdin"], input=password + "\n",
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_token(sub: str, ttl: int = 300, secret: str = SECRET) -> str:
    """An HS256 JWT, built by hand with hmac (no dependency)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = _b64(json.dumps({"sub": sub, "exp": now + ttl, "iat": now}).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (header, claims)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (header, claims, _b64(sig))


@pytest.fixture
def auth_broker(make_broker, tmp_path) -> Broker:
    """A broker with a users file (alice by password, bob by token only)
    and a token secret; anonymous connections may do nothing."""
    users = tmp_path / "users"
    users.write_text(
        "[user:alice]\npassword = %s\npublish = alice.*, shared\nsubscribe = alice.*, shared\n"
        "history = alice.*, shared\n\n"
        "[user:bob]\npublish = shared\nsubscribe = shared\nhistory = shared\n"
        % argon2_hash("alice-pw-123"))
    secret = tmp_path / "jwt.secret"
    secret.write_text(SECRET + "\n")
    return make_broker(1, users_file=str(users), jwt_secret_file=str(secret))


# -- TLS --------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed certificate for 127.0.0.1 made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key
