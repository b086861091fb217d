"""CoreMQ client: the original synchronous :class:`MessageQueue` and an
asyncio client (:func:`connect`). Standard library only."""

from ._protocol import (
    AuthenticationFailed,
    AuthenticationRequired,
    ConnectionLost,
    CoreMQError,
    FramingError,
    Gap,
    PermissionDenied,
    Position,
    ProtocolError,
    TokenExpired,
)
from .aio import Client, Message, Subscription, connect
from .sync import MessageQueue

__version__ = "0.1.0"

__all__ = [
    "MessageQueue", "Client", "Message", "Subscription", "connect",
    "CoreMQError", "PermissionDenied", "AuthenticationFailed", "AuthenticationRequired",
    "TokenExpired", "ProtocolError", "FramingError", "ConnectionLost", "Gap", "Position",
]
