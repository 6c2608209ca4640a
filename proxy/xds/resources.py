"""xDS resource types, the refusal that names a resource and a field, and the field rule.

The rule: a field that is set on a resource and that Detour does not implement makes the whole
resource refused (NACKed, naming the field), because ignoring it would change behaviour behind
the operator's back. Fields that only name things (stats prefixes, metadata for other filters)
are accepted and ignored; each message's ignored fields are listed next to its supported ones,
and the README's coverage table is that list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)

TYPE_PREFIX = "type.googleapis.com/"
TYPE_LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
TYPE_ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
TYPE_CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
TYPE_ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Short names for messages and logs, Envoy's own (LDS, RDS, ...).
SHORT_NAMES = {
    TYPE_LISTENER: "LDS",
    TYPE_ROUTE: "RDS",
    TYPE_CLUSTER: "CDS",
    TYPE_ENDPOINT: "EDS",
    TYPE_SECRET: "SDS",
}


class XdsRejected(ValueError):
    """A resource Detour cannot apply: which one, which field, the value and why.

    Its text is the NACK's ``error_detail.message``, so it must say enough for an operator to
    find the field in the control plane's output."""

    def __init__(self, type_url: str, name: str, field: str, value: object, reason: str) -> None:
        self.type_url = type_url
        self.name = name
        self.field = field
        self.value = value
        self.reason = reason
        kind = SHORT_NAMES.get(type_url, type_url)
        super().__init__(f"{kind} {name!r}: {field} = {value!r}: {reason}")


class Refusal(Exception):
    """Raised deep in a translation that knows the field but not the resource; the caller
    that knows the resource turns it into :class:`XdsRejected`."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(field, value, reason)
        self.field = field
        self.value = value
        self.reason = reason


def refuse(field: str, value: object, reason: str) -> Refusal:
    """The refusal to raise (``raise refuse(...)``), so that type checkers see the raise."""
    return Refusal(field, value, reason)


def only_fields(
    message: Message, where: str, supported: Iterable[str], ignored: Iterable[str] = ()
) -> None:
    """Refuse the first field set on ``message`` that is neither supported nor ignorable."""
    allowed = set(supported) | set(ignored)
    for descriptor, value in message.ListFields():
        if descriptor.name not in allowed:
            shown = value if isinstance(value, int | str | bool | float) else "<set>"
            raise refuse(
                f"{where}.{descriptor.name}" if where else descriptor.name,
                shown,
                "not supported by Detour (refused rather than ignored: it would change behaviour)",
            )


def unpack(packed: AnyMessage, message_class: type[M], where: str) -> M:
    """``packed`` as ``message_class``; a wrong type or bytes that do not parse are refused."""
    expected = TYPE_PREFIX + message_class.DESCRIPTOR.full_name
    if packed.type_url != expected:
        raise refuse(where, packed.type_url, f"expected {expected}")
    message = message_class()
    try:
        message.ParseFromString(packed.value)
    except DecodeError as err:
        raise refuse(where, f"{len(packed.value)} bytes", f"does not parse: {err}") from None
    return message


def resource_name(message: Message) -> str:
    """A resource's name: ``cluster_name`` for a ClusterLoadAssignment, ``name`` otherwise."""
    if message.DESCRIPTOR.full_name == "envoy.config.endpoint.v3.ClusterLoadAssignment":
        return str(message.cluster_name)  # type: ignore[attr-defined]
    return str(message.name)  # type: ignore[attr-defined]


def seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9
