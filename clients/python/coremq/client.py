"""The original CoreMQ client's module: ``from coremq.client import
MessageQueue`` works as it did (the class lives in :mod:`coremq.sync`)."""

from .sync import MessageQueue

__all__ = ["MessageQueue"]
