"""The wire protocol shared by both clients (docs/protocol.md).

Frames are ``+LEN QUEUE JSON`` in both directions; ``LEN`` counts the bytes of
``QUEUE JSON``. This module holds the codec, the typed errors for ``ERROR:``
replies, the resume bookkeeping (positions per queue and server, §10) and the
reconnect backoff. Nothing here does I/O.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

Encoder = Callable[[Any], Union[str, bytes]]
Decoder = Callable[[Union[str, bytes]], Any]

#: Keys the broker stamps on every published message.
SENT = "coremq_sent"
SERVER = "coremq_server"
SENDER = "coremq_sender"

#: At most this many positions (servers) per queue go into ``coremq_since``
#: (the newest ones), as in the Rust client.
MAX_SINCE_SERVERS = 16

#: The longest length prefix the broker accepts (§1).
_MAX_DIGITS = 20

#: The largest incoming frame a client accepts by default (as the Rust
#: client): a longer length prefix is a framing error, so a broken or hostile
#: peer cannot make the client buffer without bound.
MAX_FRAME = 64 * 1024 * 1024

#: The notice the ``drop`` slow-consumer policy sends before a queue's next
#: message (docs/protocol.md §9): ``WARN: Dropped N messages`` with ``"queue"``.
DROPPED_PREFIX = "WARN: Dropped "
DROPPED_SUFFIX = " messages"

#: The notice a reload that took subscriptions away sends (§8), with ``"queues"``.
REVOKED = "Unsubscribed: permission revoked"

#: A request that changes nothing and is always answered ``OK: Options set``:
#: sent before a request that follows publishes made with ``ack`` off, so the
#: replies before its OK are known to be those publishes' errors.
FENCE: Dict[str, Any] = {"coremq_options": {}}
FENCE_OK = "OK: Options set"


# --------------------------------------------------------------------------
# Errors


class CoreMQError(Exception):
    """An ``ERROR:`` reply from the broker, or a protocol failure.

    ``response`` is the broker's full reply text (never holds credentials:
    the broker does not echo them).
    """

    def __init__(self, response: str) -> None:
        super().__init__(response)
        self.response = response


class PermissionDenied(CoreMQError):
    """``ERROR: Permission denied: <action> <queue>``; the connection stays."""


class AuthenticationRequired(CoreMQError):
    """``ERROR: Authentication required``: log in first (pass credentials)."""


class AuthenticationFailed(CoreMQError):
    """``ERROR: Authentication failed``: wrong credentials; the broker closed
    the connection. Not retried: reconnecting would fail the same way."""


class TokenExpired(CoreMQError):
    """``ERROR: Token expired``; the broker closed the connection."""


class ProtocolError(CoreMQError):
    """The bytes from the server are not CoreMQ frames."""


class FramingError(ProtocolError):
    """The byte stream itself is broken (no ``+``, a bad or too large length):
    nothing after it can be trusted, so the connection is closed. A frame
    whose JSON cannot be decoded is a plain :class:`ProtocolError` instead:
    the framing is intact and the connection stays."""


class ConnectionLost(CoreMQError, ConnectionError):
    """The connection dropped (or could not be made) before the answer came.

    A publish that fails this way may or may not have been delivered.
    """


def error_for(response: str) -> CoreMQError:
    """The typed exception for an ``ERROR: ...`` reply text."""
    body = response[len("ERROR:"):].strip() if response.startswith("ERROR:") else response
    if body.startswith("Permission denied"):
        return PermissionDenied(response)
    if body.startswith("Authentication failed"):
        return AuthenticationFailed(response)
    if body.startswith("Authentication required"):
        return AuthenticationRequired(response)
    if body.startswith("Token expired"):
        return TokenExpired(response)
    return CoreMQError(response)


def closing_error(err: CoreMQError) -> bool:
    """An error the broker sends before it closes the connection (a token
    that expired, a slow-consumer cut, ``...; closing``): it answers no
    publish, so it is never filed as one."""
    r = err.response
    return (isinstance(err, TokenExpired) or r.startswith("ERROR: slow consumer")
            or r.endswith("closing") or r.endswith("disconnecting"))


def reply_error(reply: Any) -> Optional[CoreMQError]:
    """The exception a reply stands for, or None for an ``OK``/other reply."""
    if isinstance(reply, dict):
        r = reply.get("response")
        if isinstance(r, str) and r.startswith("ERROR"):
            return error_for(r)
    return None


# --------------------------------------------------------------------------
# Frames


def encode_frame(queue: str, body: Union[str, bytes]) -> bytes:
    """``+LEN QUEUE BODY`` for a JSON text already encoded."""
    if not isinstance(queue, str) or not queue:
        raise ValueError("queue name must be a non-empty string")
    if any(c <= " " or c > "~" for c in queue):
        raise ValueError("queue name must be printable ASCII without spaces: %r" % queue)
    if isinstance(body, str):
        body = body.encode("utf-8")
    q = queue.encode("ascii")
    return b"+%d %s %s" % (len(q) + 1 + len(body), q, body)


def command_json(obj: Dict[str, Any]) -> str:
    """A command's JSON (our own objects: always the standard module)."""
    return json.dumps(obj, separators=(",", ":"))


class FrameReader:
    """Incremental frame parser: ``feed`` bytes, take ``(queue, json_bytes)``.

    ``max_frame`` bounds the length a frame may claim: a larger one raises
    :class:`FramingError` at once instead of buffering (or waiting for) it."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> Optional[Tuple[str, bytes]]:
        """The next complete frame, or None when more bytes are needed."""
        buf = self._buf
        if not buf:
            return None
        if buf[0:1] != b"+":
            raise FramingError("frame does not start with '+'")
        sp = buf.find(b" ", 1, 2 + _MAX_DIGITS)
        if sp < 0:
            if len(buf) > 1 + _MAX_DIGITS:
                raise FramingError("no space after the frame length")
            return None
        digits = bytes(buf[1:sp])
        if not digits.isdigit():
            raise FramingError("frame length is not a number")
        n = int(digits)
        if n > self.max_frame:
            raise FramingError("frame of %d bytes is over the limit of %d" % (n, self.max_frame))
        end = sp + 1 + n
        if len(buf) < end:
            return None
        body = bytes(buf[sp + 1:end])
        del buf[:end]
        q, _, js = body.partition(b" ")
        return q.decode("ascii", "replace"), js


# --------------------------------------------------------------------------
# Resume bookkeeping (§10)


@dataclass(frozen=True)
class Position:
    """Where a message stands in its queue: ``(coremq_sent, coremq_server)``."""

    sent: float
    server: str

    def to_json(self) -> Dict[str, Any]:
        return {"sent": self.sent, "server": self.server}

    @staticmethod
    def of(message: Any) -> Optional["Position"]:
        if not isinstance(message, dict):
            return None
        sent, server = message.get(SENT), message.get(SERVER)
        if isinstance(sent, bool) or not isinstance(server, str) or not server:
            return None
        try:  # a custom decoder may give a str or a Decimal
            t = float(sent)
        except (TypeError, ValueError):
            return None
        return Position(t, server) if t > 0 else None


@dataclass(frozen=True)
class Gap:
    """A (re-)subscription the broker did not vouch for: messages of
    ``queue`` published while the client was away may be lost.

    ``since`` is the (earliest) position the client asked to resume after, or
    None when no message of the queue had arrived yet.
    """

    queue: str
    since: Optional[Position]


class Positions:
    """Per subscribed queue, the newest position seen per server: where a
    reconnect resumes, and how replays of messages already had are dropped."""

    def __init__(self) -> None:
        self._q: Dict[str, Dict[str, float]] = {}

    def admit(self, queue: str, message: Any, subscribed: Any) -> bool:
        """Record a delivery; False if it is a replay already delivered."""
        pos = Position.of(message)
        if pos is None:
            return True
        track = self._q.get(queue)
        if track is None:
            if queue not in subscribed:
                return True
            track = self._q[queue] = {}
        seen = track.get(pos.server)
        if seen is not None and pos.sent <= seen:
            return False
        track[pos.server] = pos.sent
        return True

    def resume_points(self, queue: str) -> List[Position]:
        """The newest positions per server, earliest first, at most 16."""
        track = self._q.get(queue, {})
        ps = sorted((Position(s, srv) for srv, s in track.items()),
                    key=lambda p: (p.sent, p.server))
        return ps[-MAX_SINCE_SERVERS:]

    def forget(self, queues: Any) -> None:
        for q in queues:
            self._q.pop(q, None)


def subscribe_command(queues: List[str], positions: Positions,
                      resume: bool) -> Tuple[Dict[str, Any], Dict[str, List[Position]]]:
    """The subscribe command for ``queues``, with ``coremq_since`` for those
    with positions when ``resume``; also returns what was asked per queue."""
    cmd: Dict[str, Any] = {"coremq_subscribe": list(queues)}
    since: Dict[str, List[Position]] = {}
    if resume:
        for q in queues:
            pts = positions.resume_points(q)
            since[q] = pts
        entries = {q: (p[0].to_json() if len(p) == 1 else [x.to_json() for x in p])
                   for q, p in since.items() if p}
        if entries:
            cmd["coremq_since"] = entries
    return cmd, since


def gaps_of(reply: Any, since: Dict[str, List[Position]]) -> List[Gap]:
    """The gaps a resubscribe reply reveals: every queue whose resume the
    reply does not report ``recovered: true``, and queues resubscribed with
    no position at all."""
    rec = reply.get("recovered") if isinstance(reply, dict) else None
    rec = rec if isinstance(rec, dict) else {}
    out = []
    for q, pts in since.items():
        if not pts:
            out.append(Gap(q, None))
        elif rec.get(q) is not True:
            out.append(Gap(q, pts[0]))
    return out


# --------------------------------------------------------------------------
# Misc


class Backoff:
    """Delays doubling from ``minimum`` to ``maximum``, each drawn from the
    upper half of the step (jitter), as the Rust client does."""

    def __init__(self, minimum: float = 0.1, maximum: float = 2.0) -> None:
        self.min, self.max = minimum, max(minimum, maximum)
        self.next = self.min

    def delay(self) -> float:
        step = self.next
        self.next = min(step * 2, self.max)
        return step / 2 + random.random() * step / 2

    def reset(self) -> None:
        self.next = self.min


TokenSource = Union[str, Callable[[], str]]


def auth_command(user: Optional[str], password: Optional[str],
                 token: Optional[TokenSource]) -> Optional[Dict[str, Any]]:
    """The ``coremq_auth`` command for the given credentials, if any. A
    callable ``token`` is called for each connection (fresh tokens for
    reconnects after the old one expired)."""
    if token is not None:
        return {"coremq_auth": {"token": token() if callable(token) else token}}
    if user is not None:
        return {"coremq_auth": {"user": user, "password": password or ""}}
    return None


def wrap_message(message: Any) -> Any:
    """The original client's rule: a string is sent as ``{"coremq_string": s}``."""
    if isinstance(message, str):
        return {"coremq_string": message}
    return message


def is_reply(own_id: Optional[str], queue: str, message: Any) -> bool:
    """Replies come on the connection's id and carry no ``coremq_sender``
    (point-to-point messages on the id do)."""
    if queue != own_id or not isinstance(message, dict) or SENDER in message:
        return False
    return not is_notice(message)


def is_notice(message: Any) -> bool:
    """Frames on the connection's id that answer no request: ``BYE`` on
    shutdown, ``Unsubscribed: permission revoked`` after a reload, and
    ``WARN: Dropped N messages`` of the ``drop`` policy. Taking one for a
    reply would pair every later reply with the wrong request."""
    r = message.get("response") if isinstance(message, dict) else None
    return (r == "BYE" or (isinstance(r, str) and r.startswith("Unsubscribed"))
            or dropped_notice(message) is not None)


def dropped_notice(message: Any) -> Optional[Tuple[str, int]]:
    """``(queue, N)`` for ``{"response": "WARN: Dropped N messages", "queue":
    q}``, else None (as the Rust client: without its string ``queue`` it is
    not one)."""
    if not isinstance(message, dict):
        return None
    r, q = message.get("response"), message.get("queue")
    if not (isinstance(r, str) and isinstance(q, str)
            and r.startswith(DROPPED_PREFIX) and r.endswith(DROPPED_SUFFIX)):
        return None
    n = r[len(DROPPED_PREFIX):len(r) - len(DROPPED_SUFFIX)]
    if not n.isdigit():
        return None
    return q, int(n)


def revoked_queues(message: Any) -> Optional[List[str]]:
    """The queues of an ``Unsubscribed: permission revoked`` notice, else None."""
    if not isinstance(message, dict) or message.get("response") != REVOKED:
        return None
    qs = message.get("queues")
    return [q for q in qs if isinstance(q, str)] if isinstance(qs, list) else []


def report_gap(gaps: List[Gap], on_gap: Optional[Callable[[Gap], None]], gap: Gap) -> None:
    """Record ``gap`` and call the application's ``on_gap``; an exception in
    the callback is logged, not allowed to break the reconnect."""
    gaps.append(gap)
    if on_gap is not None:
        try:
            on_gap(gap)
        except Exception:
            logging.getLogger("coremq").exception("coremq: on_gap callback failed")
