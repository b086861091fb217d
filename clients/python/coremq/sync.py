"""The synchronous client: the original CoreMQ ``MessageQueue``, kept
recognisable, with reconnect and resume, credentials, TLS and pluggable JSON.
"""

from __future__ import annotations

import json
import socket
import ssl as _ssl
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from . import _kv
from ._protocol import (
    Backoff,
    ConnectionLost,
    CoreMQError,
    Decoder,
    Encoder,
    FENCE,
    FENCE_OK,
    FrameReader,
    FramingError,
    Gap,
    AuthenticationFailed,
    MAX_FRAME,
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

Frame = Tuple[Optional[str], Optional[Any]]

#: How many errors of publishes made with ``ack`` off are kept.
PUBLISH_ERRORS_KEPT = 100


def _names(queues: Iterable[Any]) -> List[str]:
    """``subscribe('a', 'b')`` and ``subscribe(['a', 'b'])`` alike."""
    out: List[str] = []
    for q in queues:
        if isinstance(q, (list, tuple)):
            out.extend(q)
        else:
            out.append(q)
    if not out:
        raise ValueError("Must pass at least one queue name")
    return out


class MessageQueue:
    """A blocking CoreMQ connection, with the original client's methods.

    >>> m = MessageQueue('127.0.0.1')
    >>> m.connect()
    >>> m.welcome_message['response']
    'OK: Welcome to CoreMQ server'
    >>> m.subscribe('test')
    >>> m.send_message(queue='test', message=dict(a=1))
    >>> m.get_message()            # (queue, message) or (None, None)

    Beyond the original:

    * ``user``/``password`` or ``token``: ``coremq_auth`` is the first request
      on every connection; a refusal raises :class:`AuthenticationFailed`.
      ``token`` may be a callable returning a fresh token, called for each
      connection (a token that expired closes the connection; the reconnect
      then logs in with a new one).
    * ``ssl_context``: TLS (the broker's ``tls_port``); ``server_hostname``
      defaults to ``server``.
    * reconnect with backoff (``reconnect``, ``reconnect_timeout``): a lost
      connection is made again, options are set again and subscriptions are
      resumed after the last message received per queue and server
      (``coremq_since``). A resume the broker does not vouch for
      (``recovered: false``, or a queue with no message yet) is recorded in
      :attr:`gaps` and passed to ``on_gap``. Replays of messages already
      received are dropped. Point-to-point messages sent to the old
      connection id while away are lost (the id changes).
    * ``encoder``/``decoder`` for messages (default: the ``json`` module).
    * ``ERROR:`` replies raise typed exceptions (:class:`CoreMQError` and its
      subclasses) instead of being returned.
    * With the ``ack`` option off a publish has no reply, but a refused one
      still gets an ``ERROR:``. It cannot be raised (the call returned long
      ago) nor taken for the reply of a later request: before the next
      request the client sends a fence (``{"coremq_options": {}}``, always
      ``OK: Options set``) in the same write, and every error that comes
      before the fence's OK goes to :attr:`publish_errors` and
      :attr:`last_error`.
    * :attr:`dropped` counts, per queue, the messages the broker's ``drop``
      slow-consumer policy skipped for this connection (``WARN: Dropped N
      messages``), counted before the queue's next message is returned.
    * A queue whose subscription a reload of the users file revoked
      (``Unsubscribed: permission revoked``), or whose subscribe was refused,
      leaves :attr:`subscriptions`: it is not subscribed again on reconnect
      (the broker would refuse the whole list).
    * ``max_frame`` (default 64 MiB) bounds an incoming frame; a longer one,
      or any other break in the framing, raises :class:`FramingError` and
      closes the connection (the next call connects again).
    """

    def __init__(
        self,
        server: str = "127.0.0.1",
        port: int = 6747,
        *,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[TokenSource] = None,
        ssl_context: Optional[_ssl.SSLContext] = None,
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
        self.server = server
        self.port = port
        self.socket: Optional[socket.socket] = None
        self.connection_id: Optional[str] = None
        self.welcome_message: Optional[Dict[str, Any]] = None
        self.subscriptions: List[str] = []
        self.options: Dict[str, Any] = {}
        #: The user the broker logged this connection in as, if any.
        self.user: Optional[str] = None
        #: Every resume the broker did not vouch for, oldest first.
        self.gaps: List[Gap] = []
        #: Messages the ``drop`` policy skipped for this client, per queue
        #: (summed over connections).
        self.dropped: Dict[str, int] = {}
        #: Errors of publishes sent with ``ack`` off, newest last (at most
        #: PUBLISH_ERRORS_KEPT); the newest is also :attr:`last_error`.
        self.publish_errors: Deque[CoreMQError] = deque(maxlen=PUBLISH_ERRORS_KEPT)
        self.last_error: Optional[CoreMQError] = None
        self.max_frame = max_frame
        self.encoder = encoder
        self.decoder = decoder
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.timeout = timeout
        self.on_gap = on_gap
        self._user = user
        self._password = password
        self._token = token
        self._ssl = ssl_context
        self._hostname = server_hostname or server
        self._backoff = Backoff(*backoff)
        self._reader = FrameReader(max_frame)
        self._inbox: Deque[Tuple[str, Any]] = deque()
        self._positions = Positions()
        self._connected_before = False
        # Publishes were sent with ack off since the last reply was read:
        # their errors may still come, so the next request is fenced.
        self._unfenced = False

    def __repr__(self) -> str:  # never the credentials
        return "MessageQueue(%r, %r, connection_id=%r)" % (self.server, self.port, self.connection_id)

    def __enter__(self) -> "MessageQueue":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- connection ---------------------------------------------------------

    def connect(self) -> None:
        """Connect (once; no-op when connected), log in, set the options and
        (re)subscribe. Raises ``OSError`` (``ConnectionLost`` included) when
        the broker cannot be reached."""
        if self.socket:
            return
        sock = socket.create_connection((self.server, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._hostname)
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self._reader = FrameReader(self.max_frame)
        self._unfenced = False  # a new connection owes no replies
        try:
            q, welcome = self._read_frame(time.monotonic() + self.timeout)
            self.connection_id, self.welcome_message = q, welcome
            auth = auth_command(self._user, self._password, self._token)
            if auth is not None:
                reply = self._request(auth)
                self.user = reply.get("user")
            if self.options:
                self._request({"coremq_options": dict(self.options)})
            if self.subscriptions:
                resume = self._connected_before
                cmd, since = subscribe_command(self.subscriptions, self._positions, resume)
                reply = self._request(cmd)
                if resume:
                    for gap in gaps_of(reply, since):
                        report_gap(self.gaps, self.on_gap, gap)
        except BaseException:
            self.close()
            raise
        self._connected_before = True
        self._backoff.reset()

    def close(self) -> None:
        """Close the connection. Subscriptions and options are kept: the next
        call connects again and restores them."""
        if self.socket:
            try:
                self.socket.close()
            finally:
                self.socket = None

    def _reconnect(self) -> None:
        """Connect again with backoff, for at most ``reconnect_timeout`` s."""
        self.close()
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                self.connect()
                return
            except AuthenticationFailed:
                raise
            except OSError as e:
                delay = self._backoff.delay()
                if time.monotonic() + delay > deadline:
                    raise ConnectionLost("cannot reconnect to %s:%s: %s"
                                         % (self.server, self.port, type(e).__name__)) from None
                time.sleep(delay)

    def _ensure(self) -> None:
        if self.socket:
            return
        if self._connected_before and self.reconnect:
            self._reconnect()
        else:
            self.connect()

    # -- frames -------------------------------------------------------------

    def _send(self, queue: str, body: Any) -> None:
        self._send_bytes(encode_frame(queue, body))

    def _send_bytes(self, data: bytes) -> None:
        assert self.socket is not None
        # Reads leave the socket with what was left of their deadline.
        self.socket.settimeout(self.timeout)
        self.socket.sendall(data)

    def _fenced(self, frame: bytes) -> Tuple[bytes, bool]:
        """``frame``, preceded by a fence when publishes with ack off may
        still have errors to come (one write: nothing can come between);
        and whether it was."""
        if not self._unfenced:
            return frame, False
        self._unfenced = False
        return encode_frame(self.connection_id or "-", command_json(FENCE)) + frame, True

    def _publish_error(self, err: CoreMQError) -> None:
        """An error of a publish sent with ack off: kept, never raised."""
        self.publish_errors.append(err)
        self.last_error = err

    def _observe(self, queue: str, message: Any) -> None:
        """Act on a notice as soon as it is read, wherever it is read: a drop
        count before the queue's next message can be returned, a revoked
        queue out of the subscriptions before anything can reconnect."""
        if queue != self.connection_id:
            return
        d = dropped_notice(message)
        if d is not None:
            self.dropped[d[0]] = self.dropped.get(d[0], 0) + d[1]
            return
        revoked = revoked_queues(message)
        if revoked:
            self.subscriptions[:] = [q for q in self.subscriptions if q not in revoked]
            self._positions.forget(revoked)

    def _stray_reply(self, queue: str, message: Any) -> bool:
        """True (and recorded) for an error read while no request waits but
        publishes with ack off were sent: it is theirs."""
        if self._unfenced and is_reply(self.connection_id, queue, message):
            err = reply_error(message)
            if err is not None and not closing_error(err):
                self._publish_error(err)
                return True
        return False

    def _read_frame(self, deadline: float) -> Tuple[str, Any]:
        """The next frame; ``socket.timeout`` at the deadline; ConnectionLost
        when the broker closed the connection."""
        while True:
            try:
                f = self._reader.next()
            except FramingError:
                # The bytes are kept and every later read would fail the
                # same way: only a new connection gets past them.
                self.close()
                raise
            if f is not None:
                q, js = f
                try:
                    m = self.decoder(js.decode("utf-8"))
                except Exception as e:  # a decoder's own error type, or bad UTF-8
                    # The frame is consumed and the framing intact: the
                    # connection stays, the next call reads on.
                    raise ProtocolError("cannot decode a frame of %r: %s" % (q, e)) from e
                self._observe(q, m)
                return q, m
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            sock = self.socket
            if sock is None:
                raise ConnectionLost("not connected")
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                self.close()
                raise ConnectionLost("the broker closed the connection")
            self._reader.feed(data)

    def _take_waiting(self) -> None:
        """Read what already waits on the socket, without blocking: so that a
        connection the broker closed while we were idle (a restart: ``BYE``,
        then end of stream) is noticed, and replaced, before a publish is
        written into it and lost."""
        sock = self.socket
        if sock is None:
            return
        try:
            sock.settimeout(0)
            while True:
                data = sock.recv(65536)
                if not data:
                    self.close()
                    return
                self._reader.feed(data)
        except (BlockingIOError, _ssl.SSLWantReadError, socket.timeout):
            pass
        except OSError:
            self.close()
            return
        while True:
            try:
                f = self._reader.next()
            except CoreMQError:
                self.close()
                return
            if f is None:
                return
            q, js = f
            try:
                m = self.decoder(js.decode("utf-8"))
            except Exception:
                continue  # reported by get_message's path only; skipped here
            self._observe(q, m)
            if self._stray_reply(q, m):
                continue
            if q == self.connection_id and isinstance(m, dict) and m.get("response") == "BYE":
                self.close()
                return
            self._deliver(q, m)

    def _deliver(self, queue: str, message: Any) -> None:
        if self._positions.admit(queue, message, self.subscriptions):
            self._inbox.append((queue, message))

    def _await_reply(self, fenced: bool, deadline: float) -> Dict[str, Any]:
        """The reply to the request just sent; with ``fenced``, the replies
        up to the fence's OK are errors of publishes sent with ack off and
        are recorded, not raised. Deliveries wait in the inbox. ERROR
        replies raise; ``socket.timeout`` at the deadline."""
        while True:
            q, m = self._read_frame(deadline)
            if is_reply(self.connection_id, q, m):
                err = reply_error(m)
                if fenced and (err is None or not closing_error(err)):
                    if m.get("response") == FENCE_OK:
                        fenced = False
                    elif err is not None:
                        self._publish_error(err)
                    continue
                if err is not None:
                    raise err
                return m
            if q == self.connection_id and isinstance(m, dict) and m.get("response") == "BYE":
                self.close()
                raise ConnectionLost("the broker is shutting down (BYE)")
            self._deliver(q, m)

    def _request(self, command: Dict[str, Any]) -> Dict[str, Any]:
        """Send a command to the connection's id and return its reply;
        deliveries read meanwhile wait in the inbox. ERROR replies raise."""
        data, fenced = self._fenced(encode_frame(self.connection_id or "-", command_json(command)))
        self._send_bytes(data)
        try:
            return self._await_reply(fenced, time.monotonic() + self.timeout)
        except socket.timeout:
            self.close()
            raise ConnectionLost("no reply within %s s" % self.timeout) from None

    def _call(self, command: Dict[str, Any]) -> Frame:
        """A command, made again once after a reconnect if the connection
        drops (commands are idempotent)."""
        self._ensure()
        try:
            return self.connection_id, self._request(command)
        except OSError:
            if not self.reconnect:
                raise
            self._reconnect()
            return self.connection_id, self._request(command)

    # -- the original API ---------------------------------------------------

    def send_message(self, queue: str, message: Any) -> Frame:
        """Publish ``message`` (a dict, or a string sent as
        ``{"coremq_string": ...}``; anything else is a ``ValueError``, as in
        the original, unless a custom ``encoder`` makes it an object) to
        ``queue`` and return the broker's acknowledgement as
        ``(connection_id, {"response": "OK: Message sent"})``, or
        ``(None, None)`` when the ``ack`` option is off.

        Raises :class:`PermissionDenied` (and other :class:`CoreMQError`) for
        an ``ERROR:`` reply, and :class:`ConnectionLost` when the connection
        dropped before the acknowledgement (the message may or may not have
        been delivered; the client has reconnected if it could)."""
        if self.encoder is json.dumps and not isinstance(message, (dict, str)):
            # As the original: nothing else makes a message (the broker would
            # refuse it anyway). A custom encoder decides for itself.
            raise ValueError("Messages should be either a dictionary or a string")
        body = self.encoder(wrap_message(message))
        frame = encode_frame(queue, body)
        ack = self.options.get("ack") is not False
        self._take_waiting()
        self._ensure()

        def write() -> bool:
            data, fenced = self._fenced(frame) if ack else (frame, False)
            self._send_bytes(data)
            return fenced

        try:
            fenced = write()
        except OSError:
            if not self.reconnect:
                raise
            self._reconnect()
            fenced = write()
        if not ack:
            # No reply unless refused: an error may come at any later point.
            self._unfenced = True
            return None, None
        deadline = time.monotonic() + self.timeout
        try:
            return self.connection_id, self._await_reply(fenced, deadline)
        except (OSError, socket.timeout) as e:
            self.close()
            if self.reconnect:
                try:
                    self._reconnect()
                except OSError:
                    pass
            if isinstance(e, ConnectionLost):
                raise
            raise ConnectionLost("connection lost before the acknowledgement: %s"
                                 % type(e).__name__) from None

    def get_message(self, timeout: float = 1) -> Frame:
        """The next message as ``(queue, message)``, or ``(None, None)`` when
        none arrives within ``timeout`` seconds. Broker notices on the
        connection id (``BYE``, errors such as a slow-consumer cut) are
        returned too; after ``BYE`` the connection is closed and the next call
        reconnects. A ``WARN: Dropped N messages`` notice is returned too,
        after it was counted in :attr:`dropped`; errors of publishes sent
        with ack off are not (see :attr:`publish_errors`)."""
        if self._inbox:
            return self._inbox.popleft()
        self._ensure()
        deadline = time.monotonic() + timeout
        while True:
            try:
                q, m = self._read_frame(deadline)
            except socket.timeout:
                return None, None
            except OSError:
                if not self.reconnect:
                    raise
                self._reconnect()
                if self._inbox:
                    return self._inbox.popleft()
                continue
            if q == self.connection_id and isinstance(m, dict) and m.get("response") == "BYE":
                self.close()
                return q, m
            if self._stray_reply(q, m):
                continue
            if self._positions.admit(q, m, self.subscriptions):
                return q, m

    def subscribe(self, *queues: Any) -> Frame:
        """Subscribe to ``queues``; returns ``(connection_id, reply)``."""
        names = _names(queues)
        self._ensure()  # first: a first connect would subscribe them itself
        new = [q for q in names if q not in self.subscriptions]
        self.subscriptions.extend(new)
        return self._subscribing(new, {"coremq_subscribe": names})

    def _subscribing(self, new: List[str], command: Dict[str, Any]) -> Frame:
        """Make a subscribe; if the broker refuses it, the queues it added
        (``new``) leave :attr:`subscriptions` again: kept, they would make
        every reconnect's resubscribe fail (a list is refused whole)."""
        try:
            return self._call(command)
        except CoreMQError as e:
            if not isinstance(e, ConnectionLost):
                self.subscriptions[:] = [q for q in self.subscriptions if q not in new]
            raise

    def subscribe_since(self, queue: str, sent: float, server: str) -> Frame:
        """Subscribe to ``queue`` resuming after a stored position (the
        ``coremq_sent`` and ``coremq_server`` of the last message you have).
        The reply's ``recovered`` says whether nothing was lost; when not,
        a :class:`Gap` goes to :attr:`gaps` and ``on_gap``."""
        self._ensure()  # first: a first connect would subscribe it without the position
        new = [queue] if queue not in self.subscriptions else []
        self.subscriptions.extend(new)
        pos = Position(float(sent), server)
        q, reply = self._subscribing(new, {"coremq_subscribe": [queue],
                                           "coremq_since": {queue: pos.to_json()}})
        for gap in gaps_of(reply, {queue: [pos]}):
            report_gap(self.gaps, self.on_gap, gap)
        return q, reply

    def unsubscribe(self, *queues: Any) -> Frame:
        """Unsubscribe from ``queues``; returns ``(connection_id, reply)``."""
        names = _names(queues)
        for q in names:
            if q in self.subscriptions:
                self.subscriptions.remove(q)
        self._positions.forget(names)
        return self._call({"coremq_unsubscribe": names})

    def get_history(self, *queues: Any) -> Frame:
        """``(connection_id, {"history": {queue: [message, ...]}})`` for
        ``queues`` (default: the subscriptions), oldest first."""
        names = _names(queues or tuple(self.subscriptions))
        return self._call({"coremq_gethistory": names})

    def set_options(self, **options: Any) -> Frame:
        """Set connection options (``ack``, ``echo``, ``seq``; ``None``
        removes one); they are set again after a reconnect."""
        self.options.update(options)
        for key, val in options.items():
            if val is None:
                self.options.pop(key, None)
        return self._call({"coremq_options": options})

    def status(self) -> Dict[str, Any]:
        """The broker's status object (``coremq_status``, docs/protocol.md §7)."""
        return self._call({"coremq_status": True})[1]

    # -- the key-value store (docs/protocol.md §13) --------------------------

    def kv_get(self, *keys: Any) -> Dict[str, Any]:
        """``{key: value}`` of ``keys`` that hold a value (a value set over
        memcached's protocol is a string)."""
        return _kv.values(self._call(_kv.get_command(keys))[1])

    def kv_set(self, key: str, value: Any, ttl: Optional[float] = None,
               only_if: Optional[str] = None) -> bool:
        """Set ``key`` to ``value`` (any JSON value), expiring after ``ttl``
        seconds; ``only_if`` ``"absent"`` or ``"present"`` makes it
        conditional. Returns whether it was stored."""
        return _kv.stored(self._call(_kv.set_command(key, value, ttl, only_if))[1])

    def kv_delete(self, *keys: Any) -> int:
        """Delete ``keys``; returns how many held a value."""
        return _kv.deleted(self._call(_kv.delete_command(keys))[1])

    def kv_incr(self, key: str, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key`` (missing: from 0) and return
        the new value. Not made again after a reconnect: the first may have
        been counted."""
        command = _kv.incr_command(key, by)
        self._ensure()
        return _kv.number(self._request(command))

    def stress(self, queue: str, count: int = 10000, wait: float = 0,
               silent: bool = False) -> float:
        """Publish ``count`` messages ``{"iteration": i}`` to ``queue`` (each
        acknowledged unless ``ack`` is off), ``wait`` seconds apart, and print
        the rate unless ``silent`` (as the original); returns messages per
        second."""
        start = time.time()
        for i in range(count):
            self.send_message(queue, dict(iteration=i))
            if wait:
                time.sleep(wait)
        taken = max(time.time() - start, 1e-9)
        if not silent:
            print("Stress results:")
            print("Iterations: %s" % count)
            print("Forced wait time: %s" % wait)
            print("Time taken: %s seconds" % taken)
            print("Messages per second: %s" % (float(count) / taken))
        return count / taken

    def listen(self, seconds: int = 30) -> None:
        """Print what arrives for about ``seconds`` seconds (as the original)."""
        for _ in range(seconds):
            q, m = self.get_message()
            if q:
                print(q, m)
