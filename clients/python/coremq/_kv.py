"""The key-value store's commands (docs/protocol.md §13), shared by the
synchronous and the asyncio client: building each request and reading its
reply. Keys are checked here, before anything is sent."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from ._protocol import ProtocolError

MAX_KEY = 250


def check_key(key: Any) -> str:
    """``key`` if it is 1-250 bytes of printable ASCII, else ValueError."""
    if not isinstance(key, str):
        raise TypeError("a key is a str, not %s" % type(key).__name__)
    if not (0 < len(key) <= MAX_KEY and all("!" <= c <= "~" for c in key)):
        raise ValueError("bad key %r: keys are 1-%d bytes of printable ASCII, no spaces"
                         % (key, MAX_KEY))
    return key


def keys_of(keys: Iterable[Any]) -> List[str]:
    """Keys given one by one or as lists, checked."""
    out = [check_key(k) for x in keys for k in (x if isinstance(x, (list, tuple)) else [x])]
    if not out:
        raise ValueError("Must pass at least one key")
    return out


def get_command(keys: Iterable[Any]) -> Dict[str, Any]:
    return {"coremq_get": keys_of(keys)}


def set_command(key: str, value: Any, ttl: Optional[float], only_if: Optional[str]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"key": check_key(key), "value": value}
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError("ttl is a positive number of seconds, not %r" % (ttl,))
        body["ttl"] = ttl
    if only_if is not None:
        if only_if not in ("absent", "present"):
            raise ValueError("only_if is 'absent' or 'present', not %r" % (only_if,))
        body["if"] = only_if
    return {"coremq_set": body}


def delete_command(keys: Iterable[Any]) -> Dict[str, Any]:
    return {"coremq_delete": keys_of(keys)}


def incr_command(key: str, by: int) -> Dict[str, Any]:
    if isinstance(by, bool) or not isinstance(by, int):
        raise TypeError("by is an int, not %s" % type(by).__name__)
    return {"coremq_incr": {"key": check_key(key), "by": by}}


def values(reply: Dict[str, Any]) -> Dict[str, Any]:
    v = reply.get("values")
    if not isinstance(v, dict):
        raise ProtocolError("coremq_get reply without values: %r" % (reply,))
    return v


def stored(reply: Dict[str, Any]) -> bool:
    r = reply.get("response")
    if r == "OK: Stored":
        return True
    if r == "OK: Not stored":
        return False
    raise ProtocolError("unexpected reply to coremq_set: %r" % (reply,))


def deleted(reply: Dict[str, Any]) -> int:
    n = reply.get("deleted")
    if not isinstance(n, int):
        raise ProtocolError("coremq_delete reply without deleted: %r" % (reply,))
    return n


def number(reply: Dict[str, Any]) -> int:
    n = reply.get("value")
    if not isinstance(n, int) or isinstance(n, bool):
        raise ProtocolError("coremq_incr reply without an integer: %r" % (reply,))
    return n
