"""What ``HttpChannel`` raises besides the codec's errors.

A module of their own: subclasses of ConnectionError and TimeoutError cannot be compiled by
mypyc, and the channel is (``proxy.native``); these stay Python classes, raised by it.
"""

from __future__ import annotations


class ChannelClosed(ConnectionError):
    """The peer went away (reset, or closed while we still needed bytes from it)."""


class HeadTimeout(TimeoutError):
    """A message head began arriving and was not complete within its deadline."""
