"""Credentials (password and token, §8) and TLS (§11), both clients."""

from __future__ import annotations

import asyncio
import ssl

import pytest

import coremq
from coremq import MessageQueue
from conftest import free_port, hs256_token

PASSWORD = "alice-pw-123"


def test_sync_password_login_and_rights(auth_broker):
    m = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password=PASSWORD)
    m.connect()
    assert m.user == "alice"
    m.subscribe("alice.inbox")
    assert m.send_message("alice.inbox", {"a": 1})[1]["response"] == "OK: Message sent"
    with pytest.raises(coremq.PermissionDenied) as e:
        m.send_message("bob.secret", {"a": 1})
    assert e.value.response == "ERROR: Permission denied: publish bob.secret"
    # The connection stays after a refusal.
    assert m.get_history("alice.inbox")[1]["history"]["alice.inbox"][0]["a"] == 1
    m.close()


def test_sync_wrong_password_fails_without_leaking_it(auth_broker):
    m = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password="wrong-Secret-77")
    with pytest.raises(coremq.AuthenticationFailed) as e:
        m.connect()
    assert "wrong-Secret-77" not in str(e.value) and "wrong-Secret-77" not in repr(m)
    assert m.socket is None


def test_sync_anonymous_is_refused(auth_broker):
    m = MessageQueue("127.0.0.1", auth_broker.port)
    with pytest.raises(coremq.AuthenticationRequired):
        m.subscribe("shared")
    m.close()


def test_sync_token_login_and_reconnect_logs_in_again(auth_broker):
    tok = hs256_token("bob")
    gaps = []
    sub = MessageQueue("127.0.0.1", auth_broker.port, token=tok, on_gap=gaps.append,
                       backoff=(0.05, 0.5))
    sub.subscribe("shared")
    assert sub.user == "bob"
    auth_broker.restart()
    # The resubscribe after the restart is only allowed to a logged-in user:
    # it works because coremq_auth is sent first on the new connection.
    pub = MessageQueue("127.0.0.1", auth_broker.port, user="alice", password=PASSWORD)
    for _ in range(20):
        q, msg = sub.get_message(timeout=0.25)  # BYE, then reconnect
        if sub.connection_id and q is None:
            break
    pub.send_message("shared", {"n": 1})
    for _ in range(20):
        q, msg = sub.get_message(timeout=0.5)
        if q == "shared":
            break
    assert q == "shared" and msg["n"] == 1
    assert sub.user == "bob"
    assert [g.queue for g in gaps] == ["shared"]  # not durable: no promise
    sub.close()
    pub.close()


def test_token_provider_gives_each_connection_a_fresh_token(auth_broker):
    """A token that expires closes the connection (ERROR: Token expired); a
    callable token is asked again for the reconnect, which then works."""
    made = []

    def provider():
        made.append(hs256_token("bob", ttl=2 if not made else 300))
        return made[-1]

    async def main():
        async with coremq.connect("127.0.0.1", auth_broker.port, token=provider,
                                  backoff=(0.05, 0.2)) as c:
            sub = await c.subscribe("shared")
            first = c.connection_id
            for _ in range(100):  # the first token expires within ~2 s
                if c.connection_id != first:
                    break
                await asyncio.sleep(0.1)
            assert c.connection_id != first and len(made) == 2
            assert [type(e) for e in c.errors] == [coremq.TokenExpired]
            async with coremq.connect("127.0.0.1", auth_broker.port, user="alice",
                                      password=PASSWORD) as a:
                await a.publish("shared", {"after": "refresh"})
            assert (await sub.get(timeout=10))["after"] == "refresh"
    asyncio.run(asyncio.wait_for(main(), 60))


def test_sync_bad_token_fails(auth_broker):
    bad = hs256_token("bob", secret="another-secret-0123456789-0123456789")
    with pytest.raises(coremq.AuthenticationFailed):
        MessageQueue("127.0.0.1", auth_broker.port, token=bad).connect()


def test_asyncio_password_and_token(auth_broker):
    async def main():
        async with coremq.connect("127.0.0.1", auth_broker.port, token=hs256_token("bob")) as b, \
                coremq.connect("127.0.0.1", auth_broker.port, user="alice",
                               password=PASSWORD) as a:
            assert (a.user, b.user) == ("alice", "bob")
            sub = await b.subscribe("shared")
            with pytest.raises(coremq.PermissionDenied):
                await b.subscribe("alice.inbox")
            await a.publish("shared", {"from": "alice"})
            assert (await sub.get(timeout=10))["from"] == "alice"
            with pytest.raises(coremq.PermissionDenied):
                await b.publish("alice.inbox", {"x": 1})
        with pytest.raises(coremq.AuthenticationFailed):
            await coremq.connect("127.0.0.1", auth_broker.port, user="alice",
                                 password="nope").connect()
    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.fixture
def tls_broker(make_broker, tls_files):
    cert, key = tls_files
    # port = 0 beside tls_port would turn plain TCP off (§11): a free one.
    b = make_broker(2, port=str(free_port()), tls_port=str(free_port()), tls_cert_file=str(cert), tls_key_file=str(key))
    ctx = ssl.create_default_context(cafile=str(cert))
    return b, ctx


def test_sync_tls(tls_broker):
    b, ctx = tls_broker
    sub = MessageQueue("127.0.0.1", b.tls_port, ssl_context=ctx)
    pub = MessageQueue("127.0.0.1", b.tls_port, ssl_context=ctx)
    sub.subscribe("secure")
    assert isinstance(sub.socket, ssl.SSLSocket)
    pub.send_message("secure", {"t": 1})
    for _ in range(10):
        q, msg = sub.get_message(timeout=1)
        if q:
            break
    assert q == "secure" and msg["t"] == 1
    # A client that does not trust the certificate is refused.
    with pytest.raises(ssl.SSLError):
        MessageQueue("127.0.0.1", b.tls_port, ssl_context=ssl.create_default_context(),
                     timeout=5).connect()
    sub.close()
    pub.close()


def test_asyncio_tls(tls_broker):
    b, ctx = tls_broker

    async def main():
        async with coremq.connect("127.0.0.1", b.tls_port, ssl=ctx) as c, \
                coremq.connect("127.0.0.1", b.port) as plain:
            sub = await c.subscribe("secure2")
            await plain.publish("secure2", {"t": 2})  # TLS and plain clients interoperate
            assert (await sub.get(timeout=10))["t"] == 2
    asyncio.run(asyncio.wait_for(main(), 60))
