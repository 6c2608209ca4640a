"""The failures that cross the pipeline, one type per who failed and when (the codecs' own
errors, such as a parse error or a reset stream, are turned into these by their adapters):

* ``TryFailed``: an upstream try ended before anything of its response was forwarded, so the
  retry policy may try again, or answer with the try's local reply;
* ``UpstreamCut``: the upstream went away after the response head was forwarded: too late for
  anything but cutting the response short;
* ``DownstreamGone``: the client left (closed, reset) or sent something we refuse in the
  middle of its request; what it still deserves to hear, if anything, is ``reply``.
"""

from __future__ import annotations

from proxy.pipeline.local_reply import LocalReply


class TryFailed(Exception):
    """A try ended without forwarding anything; ``outcome`` is what the retry policy sees (a
    status code, an ``outcomes.Outcome`` name or a gRPC status name)."""

    def __init__(self, outcome: int | str, reply: LocalReply, retry_approved: bool = False) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.reply = reply
        self.retry_approved = retry_approved  # the policy and the budget already said yes


class UpstreamCut(Exception):
    """The upstream closed or reset in the middle of a response; ``flag`` says which (UC or
    UR)."""

    def __init__(self, flag: str) -> None:
        super().__init__(flag)
        self.flag = flag


class DownstreamGone(Exception):
    """The client closed or reset, or sent bytes we refuse, in the middle of a request."""

    def __init__(self, reply: LocalReply | None = None) -> None:
        super().__init__(reply)
        self.reply = reply
