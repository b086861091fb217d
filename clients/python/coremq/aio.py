"""The asyncio client.

>>> async with coremq.connect("127.0.0.1", 6747) as c:
...     async with c.subscribe("news") as sub:
...         await c.publish("news", {"title": "hello"})   # returns at the OK
...         msg = await sub.get(timeout=5)
...         print(msg.queue, msg.data)

Requests are pipelined: each one's future is queued in the order its frame
was written, and the broker answers a connection's requests in order, so
replies are paired with futures by position. Publishes with the ``ack``
option off have no place in that queue, yet a refused one still gets an
``ERROR:``: the next request is preceded by a fence (``{"coremq_options":
{}}``, answered ``OK: Options set``) whose entry in the queue takes every
error before its OK as a publish's (:attr:`Client.publish_errors`).
Notices (``BYE``, ``Unsubscribed: permission revoked``, ``WARN: Dropped N
messages``) answer no request and are never paired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl as _ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import (Any, AsyncIterator, Callable, Deque, Dict, List, Optional, Tuple)

from . import _kv
from ._protocol import (
    AuthenticationFailed,
    Backoff,
    ConnectionLost,
    CoreMQError,
    Decoder,
    Encoder,
    FENCE,
    FENCE_OK,
    FrameReader,
    MAX_FRAME,
    Gap,
    Position,
    Positions,
    TokenSource,
    ProtocolError,
    auth_command,
    closing_error,
    command_json,
    dropped_notice,
    encode_frame,
    gaps_of,
    is_reply,
    reply_error,
    report_gap,
    revoked_queues,
    subscribe_command,
    wrap_message,
)

log = logging.getLogger("coremq")

_END = object()

#: How many errors of publishes made with ``ack`` off are kept.
PUBLISH_ERRORS_KEPT = 100


class _Fence:
    """The place of a fence's reply in the pending queue: the replies that
    come before its OK are errors of publishes sent with ack off."""


@dataclass
class Message:
    """A delivered message: its queue and its decoded body (``data``).

    ``msg["key"]`` reads the body. ``replay`` is true for a message replayed
    by a resume (``coremq_replay``)."""

    queue: str
    data: Any

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default) if isinstance(self.data, dict) else default

    @property
    def position(self) -> Optional[Position]:
        return Position.of(self.data)

    @property
    def replay(self) -> bool:
        return bool(self.get("coremq_replay"))


class Subscription:
    """Messages of some queues (or, from :meth:`Client.direct`, those sent
    to the connection's id). Await it, ``async with`` it or iterate it: the
    subscribe is sent on first use. Survives reconnects."""

    def __init__(self, client: "Client", queues: List[str], direct: bool = False,
                 since: Optional[Dict[str, Position]] = None) -> None:
        self._client = client
        self.queues = queues
        self.direct = direct
        self.since = dict(since or {})
        #: The broker's reply to the subscribe (with ``recovered`` for a resume).
        self.reply: Optional[Dict[str, Any]] = None
        self._inbox: "asyncio.Queue[Any]" = asyncio.Queue()
        self._started = False
        self._closed = False

    async def start(self) -> "Subscription":
        """Subscribe (once); raises :class:`CoreMQError` if refused."""
        if not self._started:
            self._started = True
            try:
                await self._client._add(self)
            except BaseException:
                self._started = False
                raise
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    async def __aenter__(self) -> "Subscription":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.unsubscribe()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        await self.start()
        item = await self._inbox.get()
        if item is _END:
            self._inbox.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)  # sticky: every later call raises it too
            raise item
        return item

    async def get(self, timeout: Optional[float] = None) -> Message:
        """The next message; ``asyncio.TimeoutError`` after ``timeout`` s;
        ``StopAsyncIteration`` once unsubscribed or the client closed."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def unsubscribe(self) -> None:
        """Stop this subscription (the queue is unsubscribed when no other
        subscription of this client holds it) and end its iteration."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._client._remove(self)
        self._inbox.put_nowait(_END)

    def _put(self, item: Any) -> None:
        if not self._closed:
            self._inbox.put_nowait(item)


class Client:
    """An asyncio CoreMQ connection; make one with :func:`connect`.

    Options as for :class:`coremq.MessageQueue`: ``user``/``password`` or
    ``token`` (``coremq_auth`` first on every connection), ``ssl`` (an
    ``ssl.SSLContext``), ``encoder``/``decoder``, ``reconnect``,
    ``reconnect_timeout``, ``backoff``, ``timeout`` (per request) and
    ``on_gap`` (called with each :class:`Gap` of a resume, also kept in
    :attr:`gaps`), ``max_frame`` (the largest incoming frame, 64 MiB by
    default: a longer one is a framing error and the connection is made
    again).

    :attr:`dropped` counts per queue the messages the broker's ``drop``
    slow-consumer policy skipped (``WARN: Dropped N messages``), counted
    before the queue's next message is handed to its subscriptions.
    Errors of publishes sent with ``ack`` off go to :attr:`publish_errors`
    and :attr:`last_error`. A queue a reload of the users file revoked
    leaves the subscriptions (it is not subscribed again on reconnect).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6747,
        *,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[TokenSource] = None,
        ssl: Optional[_ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        encoder: Encoder = json.dumps,
        decoder: Decoder = json.loads,
        reconnect: bool = True,
        reconnect_timeout: float = 30.0,
        backoff: Tuple[float, float] = (0.1, 2.0),
        timeout: float = 30.0,
        on_gap: Optional[Callable[[Gap], None]] = None,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.host, self.port = host, port
        self.max_frame = max_frame
        self.encoder, self.decoder = encoder, decoder
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.timeout = timeout
        self.on_gap = on_gap
        self.connection_id: Optional[str] = None
        self.welcome_message: Optional[Dict[str, Any]] = None
        #: The user this connection is logged in as, if any.
        self.user: Optional[str] = None
        #: Every resume the broker did not vouch for, oldest first.
        self.gaps: List[Gap] = []
        #: Unsolicited error replies (e.g. a slow-consumer cut), newest last.
        self.errors: List[CoreMQError] = []
        #: Messages the ``drop`` policy skipped for this client, per queue.
        self.dropped: Dict[str, int] = {}
        #: Errors of publishes sent with ``ack`` off, newest last (at most
        #: PUBLISH_ERRORS_KEPT); the newest is also :attr:`last_error`.
        self.publish_errors: Deque[CoreMQError] = deque(maxlen=PUBLISH_ERRORS_KEPT)
        self.last_error: Optional[CoreMQError] = None
        # Publishes were written with ack off since the last fence.
        self._unfenced = False
        self.options: Dict[str, Any] = {}
        self._user, self._password, self._token = user, password, token
        self._ssl = ssl
        self._hostname = server_hostname or (host if ssl is not None else None)
        self._backoff = Backoff(*backoff)
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._frames = FrameReader(max_frame)
        self._pending: Deque[Any] = deque()  # futures and _Fence entries
        self._subs: Dict[str, List[Subscription]] = {}
        self._direct: List[Subscription] = []
        self._positions = Positions()
        self._ready = asyncio.Event()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._task: Optional["asyncio.Task[None]"] = None

    def __repr__(self) -> str:  # never the credentials
        return "Client(%r, %r, connection_id=%r)" % (self.host, self.port, self.connection_id)

    # -- lifecycle ----------------------------------------------------------

    async def connect(self) -> "Client":
        """Connect, log in and start reading. Raises ``OSError`` if the
        broker cannot be reached, :class:`AuthenticationFailed` for wrong
        credentials."""
        await self._open(resume=False)
        self._task = asyncio.ensure_future(self._supervise())
        return self

    async def __aenter__(self) -> "Client":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection and end every subscription's iteration."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._drop(ConnectionLost("client closed"))
        for subs in list(self._subs.values()) + [self._direct]:
            for s in subs:
                s._put(_END)

    async def _open(self, resume: bool) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                    server_hostname=self._hostname),
            self.timeout)
        self._reader, self._writer, self._frames = reader, writer, FrameReader(self.max_frame)
        self._unfenced = False  # a new connection owes no replies
        try:
            q, welcome = await asyncio.wait_for(self._read_frame(), self.timeout)
            self.connection_id, self.welcome_message = q, welcome
            auth = auth_command(self._user, self._password, self._token)
            if auth is not None:
                reply = await self._inline(auth)
                self.user = reply.get("user")
            if self.options:
                await self._inline({"coremq_options": dict(self.options)})
            queues = [q for q, subs in self._subs.items() if subs]
            if queues:
                cmd, since = subscribe_command(queues, self._positions, resume)
                reply = await self._inline(cmd)
                if resume:
                    for gap in gaps_of(reply, since):
                        report_gap(self.gaps, self.on_gap, gap)
        except BaseException:
            writer.close()
            self._writer = None
            raise
        self._backoff.reset()
        self._ready.set()

    async def _read_frame(self) -> Tuple[str, Any]:
        assert self._reader is not None
        while True:
            f = self._frames.next()
            if f is not None:
                try:
                    return f[0], self.decoder(f[1].decode("utf-8"))
                except Exception as e:  # a decoder's own error type, or bad UTF-8
                    # Skipped, not fatal: the framing is intact, and dropping
                    # the connection would only replay the same frame.
                    err = ProtocolError("cannot decode a frame of %r: %s" % (f[0], e))
                    log.warning("coremq: %s", err)
                    self.errors.append(err)
                    continue
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionLost("the broker closed the connection")
            self._frames.feed(data)

    async def _inline(self, command: Dict[str, Any]) -> Dict[str, Any]:
        """A request during the handshake, before the read loop runs."""
        assert self._writer is not None
        self._writer.write(encode_frame(self.connection_id or "-", command_json(command)))
        while True:
            q, m = await asyncio.wait_for(self._read_frame(), self.timeout)
            if is_reply(self.connection_id, q, m):
                err = reply_error(m)
                if err is not None:
                    raise err
                return m
            if not self._dispatch(q, m):
                raise ConnectionLost("the broker is shutting down (BYE)")

    async def _read_loop(self) -> None:
        while True:
            q, m = await self._read_frame()
            if is_reply(self.connection_id, q, m):
                err = reply_error(m)
                head = self._pending[0] if self._pending else None
                if isinstance(head, _Fence):
                    if m.get("response") == FENCE_OK:
                        self._pending.popleft()
                    elif err is not None and not closing_error(err):
                        self._publish_error(err)
                    elif err is not None:  # the connection ends next
                        log.warning("coremq: %s", err.response)
                        self.errors.append(err)
                    continue
                fut = self._pending.popleft() if self._pending else None
                if fut is None:
                    if err is not None:
                        if self._unfenced and not closing_error(err):  # a publish's
                            self._publish_error(err)
                        else:
                            log.warning("coremq: %s", err.response)
                            self.errors.append(err)
                    continue
                if not fut.done():
                    if err is not None:
                        fut.set_exception(err)
                    else:
                        fut.set_result(m)
            elif not self._dispatch(q, m):
                return

    def _publish_error(self, err: CoreMQError) -> None:
        """An error of a publish sent with ack off: kept, never paired."""
        log.warning("coremq: publish with ack off: %s", err.response)
        self.publish_errors.append(err)
        self.last_error = err

    def _dispatch(self, q: str, m: Any) -> bool:
        """Hand a delivery to its subscriptions; False for ``BYE``."""
        if q == self.connection_id:
            if isinstance(m, dict) and m.get("response") == "BYE":
                return False
            d = dropped_notice(m)
            if d is not None:
                # Read before the queue's next message: counted before it
                # reaches a subscription.
                self.dropped[d[0]] = self.dropped.get(d[0], 0) + d[1]
                log.warning("coremq: %s of %s", m.get("response"), d[0])
                return True
            revoked = revoked_queues(m)
            if revoked:
                # Out of the resubscribe list: the broker refuses a list
                # as a whole, so one revoked queue would fail every reconnect.
                for rq in revoked:
                    self._subs.pop(rq, None)
                self._positions.forget(revoked)
                log.warning("coremq: %s: %s", m.get("response"), revoked)
                return True
            if isinstance(m, dict) and "coremq_sender" not in m:
                log.info("coremq: %s", m.get("response"))
                return True
            for s in self._direct:
                s._put(Message(q, m))
            return True
        if self._positions.admit(q, m, self._subs):
            for s in self._subs.get(q, ()):
                s._put(Message(q, m))
        return True

    def _drop(self, exc: BaseException) -> None:
        """Forget the connection: fail every request waiting on it."""
        self._ready.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        while self._pending:
            fut = self._pending.popleft()
            if isinstance(fut, _Fence):
                continue
            if not fut.done():
                fut.set_exception(exc)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._ready.set()
        for subs in list(self._subs.values()) + [self._direct]:
            for s in subs:
                s._put(exc)

    async def _supervise(self) -> None:
        while not self._closed:
            try:
                await self._read_loop()
                why = "the broker is shutting down (BYE)"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # OSError, ProtocolError, anything: never die silently
                why = str(e) or type(e).__name__
            self._drop(ConnectionLost("connection lost: " + why))
            if self._closed:
                return
            if not self.reconnect:
                self._fail(ConnectionLost("connection lost: " + why))
                return
            deadline = time.monotonic() + self.reconnect_timeout
            while True:
                delay = self._backoff.delay()
                await asyncio.sleep(delay)
                try:
                    await self._open(resume=True)
                    break
                except AuthenticationFailed as e:
                    self._fail(e)
                    return
                except (OSError, CoreMQError, asyncio.TimeoutError):
                    if time.monotonic() > deadline:
                        self._fail(ConnectionLost("cannot reconnect to %s:%s"
                                                  % (self.host, self.port)))
                        return

    # -- requests -----------------------------------------------------------

    async def _wait_ready(self) -> asyncio.StreamWriter:
        if self._closed:
            raise ConnectionLost("client closed")
        if not self._ready.is_set():
            await asyncio.wait_for(self._ready.wait(), self.reconnect_timeout + self.timeout)
        if self._error is not None:
            raise self._error
        assert self._writer is not None
        return self._writer

    async def _send(self, queue: str, body: Any, want_reply: bool = True) -> Any:
        writer = await self._wait_ready()
        fut: Optional["asyncio.Future[Any]"] = None
        data = encode_frame(queue, body)
        if want_reply:
            if self._unfenced:
                # The same write, no await between: nothing else can come
                # between the fence and this request on the wire or in
                # the queue.
                self._unfenced = False
                self._pending.append(_Fence())
                data = encode_frame(self.connection_id or "-", command_json(FENCE)) + data
            fut = asyncio.get_running_loop().create_future()
            self._pending.append(fut)
        else:
            self._unfenced = True
        writer.write(data)
        try:
            await writer.drain()
        except OSError:
            pass  # the read loop notices and fails the future
        if fut is None:
            return None
        return await asyncio.wait_for(fut, self.timeout)

    async def _request(self, command: Dict[str, Any]) -> Dict[str, Any]:
        while True:
            try:
                await self._wait_ready()
                return await self._send(self.connection_id or "-", command_json(command))
            except ConnectionLost:
                # Commands are idempotent: make it again once reconnected.
                if self._closed or self._error is not None or not self.reconnect:
                    raise

    async def publish(self, queue: str, message: Any) -> Optional[Dict[str, Any]]:
        """Publish ``message`` to ``queue``; returns the ``OK: Message sent``
        reply once it arrives (``None`` with the ``ack`` option off).

        Raises :class:`PermissionDenied` etc. for an ``ERROR:`` reply and
        :class:`ConnectionLost` if the connection dropped first (the message
        may or may not have been delivered)."""
        body = self.encoder(wrap_message(message))
        return await self._send(queue, body, want_reply=self.options.get("ack") is not False)

    async def send(self, connection_id: str, message: Any) -> Optional[Dict[str, Any]]:
        """Point-to-point: publish to another connection's id."""
        return await self.publish(connection_id, message)

    def subscribe(self, *queues: str,
                  since: Optional[Dict[str, Position]] = None) -> Subscription:
        """A :class:`Subscription` to ``queues``: ``await`` it, use it with
        ``async with`` or ``async for`` (the subscribe is sent on first use).

        ``since`` maps queues to the :class:`Position` of the last message you
        have (e.g. stored ``msg.position``): the broker replays what followed
        (``msg.replay``) before the live messages; ``sub.reply["recovered"]``
        says whether it could vouch that nothing is missing, and a queue it
        could not is a :class:`Gap` (``gaps``, ``on_gap``). A queue this
        client already subscribes to is not resumed again."""
        names = [q for x in queues for q in (x if isinstance(x, (list, tuple)) else [x])]
        if not names:
            raise ValueError("Must pass at least one queue name")
        if since and not set(since) <= set(names):
            raise ValueError("since names queues not subscribed: %s" % sorted(set(since) - set(names)))
        return Subscription(self, names, since=since)

    def direct(self) -> Subscription:
        """Messages sent to this connection's id (point-to-point)."""
        return Subscription(self, [], direct=True)

    async def history(self, *queues: str) -> Dict[str, List[Any]]:
        """``{queue: [message, ...]}``, oldest first; queues without history
        are left out."""
        reply = await self._request({"coremq_gethistory": list(queues)})
        return reply.get("history", {})

    async def status(self) -> Dict[str, Any]:
        """The broker's status object (``coremq_status``, docs/protocol.md §7)."""
        return await self._request({"coremq_status": True})

    async def kv_get(self, *keys: str) -> Dict[str, Any]:
        """``{key: value}`` of ``keys`` that hold a value (a value set over
        memcached's protocol is a string)."""
        return _kv.values(await self._request(_kv.get_command(keys)))

    async def kv_set(self, key: str, value: Any, ttl: Optional[float] = None,
                     only_if: Optional[str] = None) -> bool:
        """Set ``key`` to ``value`` (any JSON value), expiring after ``ttl``
        seconds; ``only_if`` ``"absent"`` or ``"present"`` makes it
        conditional. Returns whether it was stored."""
        return _kv.stored(await self._request(_kv.set_command(key, value, ttl, only_if)))

    async def kv_delete(self, *keys: str) -> int:
        """Delete ``keys``; returns how many held a value."""
        return _kv.deleted(await self._request(_kv.delete_command(keys)))

    async def kv_incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key`` (missing: from 0) and return
        the new value. Not made again after a reconnect: the first may have
        been counted."""
        command = _kv.incr_command(key, by)
        await self._wait_ready()
        return _kv.number(await self._send(self.connection_id or "-", command_json(command)))

    async def set_options(self, **options: Any) -> Dict[str, Any]:
        """Set connection options (``ack``, ``echo``, ``seq``; ``None``
        removes one); set again after a reconnect."""
        self.options.update(options)
        for k, v in options.items():
            if v is None:
                self.options.pop(k, None)
        return await self._request({"coremq_options": options})

    async def _add(self, sub: Subscription) -> None:
        if sub.direct:
            self._direct.append(sub)
            return
        new = [q for q in sub.queues if not self._subs.get(q)]
        for q in sub.queues:
            self._subs.setdefault(q, []).append(sub)
        if new:
            cmd: Dict[str, Any] = {"coremq_subscribe": new}
            resume = {q: [sub.since[q]] for q in new if q in sub.since}
            if resume:
                cmd["coremq_since"] = {q: p[0].to_json() for q, p in resume.items()}
            try:
                sub.reply = await self._request(cmd)
                for gap in gaps_of(sub.reply, resume):
                    report_gap(self.gaps, self.on_gap, gap)
            except BaseException:
                await self._remove(sub, send=False)
                raise

    async def _remove(self, sub: Subscription, send: bool = True) -> None:
        if sub.direct:
            if sub in self._direct:
                self._direct.remove(sub)
            return
        gone = []
        for q in sub.queues:
            if q not in self._subs:
                continue  # revoked by the broker, or never added
            subs = self._subs[q]
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(q, None)
                gone.append(q)
        self._positions.forget(gone)
        if gone and send and not self._closed and self._error is None:
            await self._request({"coremq_unsubscribe": gone})


def connect(host: str = "127.0.0.1", port: int = 6747, **kwargs: Any) -> Client:
    """A :class:`Client`; use ``async with coremq.connect(...) as c`` (or
    ``c = await coremq.connect(...).connect()``)."""
    return Client(host, port, **kwargs)
