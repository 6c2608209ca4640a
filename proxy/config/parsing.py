"""The vocabulary every section of the mesh file is parsed with: its error, paths and scalars.

This module owns :class:`MeshConfigError`, the refusal that carries a problem up from deep in
the parse (:func:`refuse`: the place in the document, such as ``services[1].ports[0].port``,
the value found there and what is wrong with it; the loader adds the file's name), and the
generic helpers the sections are built from: paths (:func:`at`, :func:`item`), mappings and
lists (:func:`mapping`, :func:`entry`, :func:`required`, :func:`list_of`, :func:`unique`),
scalars (names, integers, durations, percentages, choices, addresses) and tables of field
parsers (:data:`Parser`, :func:`fields`, :func:`optional`), and the schema's numeric limits
(``MAX_*``).

Unknown keys are errors: a typo such as ``conect_timeout`` would otherwise silently fall back
to a default.

Durations are a number of seconds or a string with a unit (``250ms``, ``1.5s``, ``2m``,
``1h``). Every duration must be greater than zero and at most one day: anything longer is far
more likely a unit mistake than a wish, and a zero timeout would fail every connection.

The sections use it as ``from proxy.config import parsing as p`` (``p.refuse``, ``p.at``), so
that their local variables (``entry``, ``path``, ``port``) never shadow a helper.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from proxy.config.model import IPAddress

DOCUMENT = "<document>"  # the path of errors about the file as a whole
MAX_DURATION = 86400.0  # one day, in seconds
MAX_COUNT = 2**32 - 1  # Envoy keeps thresholds and counters in uint32
MAX_WEIGHT = 1_000_000
MAX_CONNECT_ATTEMPTS = 10
MAX_RING_SIZE = 8 * 1024 * 1024  # Envoy's default maximum_ring_size
MAX_CHOICE_COUNT = 100

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Parser = Callable[[Any, str], Any]  # a field's parser: (node, its path) -> the model's value


# --- the error and the refusal -----------------------------------------------------------------


class MeshConfigError(ValueError):
    """The mesh file is unusable; ``path`` says where in the document and ``value`` what."""

    def __init__(self, source: str, path: str, value: object, reason: str) -> None:
        self.source = source
        self.path = path
        self.value = value
        self.reason = reason
        super().__init__(f"{source}: {path} = {value!r}: {reason}")


class Refused(Exception):
    """Raised deep in the parse without knowing the source; the loader's ``parse_mesh`` adds it
    and raises :class:`MeshConfigError`."""

    def __init__(self, path: str, value: object, reason: str) -> None:
        super().__init__(path, value, reason)
        self.path = path
        self.value = value
        self.reason = reason


def refuse(path: str, value: object, reason: str) -> NoReturn:
    """Stop the parse: ``value``, found at ``path``, is refused for ``reason``."""
    raise Refused(path, value, reason)


# --- paths and sections ------------------------------------------------------------------------


def at(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def mapping(node: object, path: str, allowed: Mapping[str, object] | tuple[str, ...]) -> dict:
    """A mapping with only ``allowed`` keys; null means empty (an emptied section)."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        refuse(path or DOCUMENT, node, "expected a mapping")
    for key, value in node.items():
        if key not in allowed:
            refuse(at(path, key), value, _unknown_key_reason(key, tuple(allowed)))
    return node


def _unknown_key_reason(key: object, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key (expected one of: {', '.join(allowed)}){hint}"


def entry(node: object, where: str, allowed: tuple[str, ...]) -> dict:
    """A list item that must be a mapping (null is not an empty item, it is a mistake)."""
    if not isinstance(node, dict):
        refuse(where, node, "expected a mapping")
    return mapping(node, where, allowed)


def required(entry: dict, key: str, where: str) -> object:
    if key not in entry:
        refuse(at(where, key), None, "required")
    return entry[key]


def list_of(node: object, path: str) -> list:
    """A list; null means empty (an emptied section)."""
    if node is None:
        return []
    if not isinstance(node, list):
        refuse(path, node, "expected a list")
    return node


def unique(value: object, earlier: list[Any], path: str, list_path: str, what: str) -> None:
    """Refuse ``value`` when an earlier item of the list at ``list_path`` already has it."""
    if value in earlier:
        refuse(path, value, f"duplicate {what} (also {item(list_path, earlier.index(value))})")


# --- scalars -----------------------------------------------------------------------------------


def string(node: object, path: str) -> str:
    if not isinstance(node, str):
        refuse(path, node, "expected a string")
    return node


def dns_label(node: object, path: str) -> str:
    """Names become DNS labels (``name.namespace.svc.<domain>``), so they follow RFC 1123."""
    text = string(node, path)
    if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
        refuse(path, node, "not a DNS label (lowercase a-z, 0-9 and '-', 1-63 chars)")
    return text


def dns_name(node: object, path: str) -> str:
    text = string(node, path)
    labels = text.split(".")
    if len(text) > 253 or not all(len(x) <= 63 and _DNS_LABEL.fullmatch(x) for x in labels):
        refuse(path, node, "not a DNS name (dot-separated lowercase labels, at most 253 chars)")
    return text


def integer(node: object, path: str, low: int, high: int) -> int:
    """An integer in ``[low, high]``; YAML booleans are ints in Python but never accepted."""
    if isinstance(node, bool) or not isinstance(node, int):
        refuse(path, node, f"expected an integer ({low}-{high})")
    if not low <= node <= high:
        refuse(path, node, f"out of range ({low}-{high})")
    return node


def ranged(low: int, high: int) -> Parser:
    return lambda node, path: integer(node, path, low, high)


port = ranged(1, 65535)
count = ranged(1, MAX_COUNT)


def duration(node: object, path: str) -> float:
    """Seconds as a number, or a string with a unit; > 0 and <= one day."""
    seconds = duration_seconds(node, path)
    if math.isnan(seconds) or seconds <= 0:
        refuse(path, node, "a duration must be greater than zero")
    if seconds > MAX_DURATION:
        refuse(path, node, f"a duration must be at most one day ({MAX_DURATION:g}s)")
    return seconds


def duration_seconds(node: object, path: str) -> float:
    if isinstance(node, float):
        return node
    if isinstance(node, int) and not isinstance(node, bool):
        # YAML integers are unbounded; float() of a huge one would overflow.
        return float(node) if abs(node) <= 2**53 else (math.inf if node > 0 else -math.inf)
    match = _DURATION.fullmatch(node.strip()) if isinstance(node, str) else None
    if match is None:
        refuse(path, node, "expected seconds as a number, or a duration like 250ms, 1.5s, 2m, 1h")
    return float(match["number"]) * _UNIT_SECONDS[match["unit"]]


def percentage(node: object, path: str) -> float:
    """A share in percent, 0-100, as a number (``10`` or ``0.5``, not ``"10%"``)."""
    if isinstance(node, bool) or not isinstance(node, int | float):
        refuse(path, node, "expected a number (0-100)")
    if not 0 <= node <= 100:  # also refuses NaN
        refuse(path, node, "out of range (0-100)")
    return float(node)


def choice(allowed: tuple[str, ...]) -> Parser:
    def parse(node: object, path: str) -> str:
        if node not in allowed:
            refuse(path, node, f"expected one of: {', '.join(allowed)}")
        return node

    return parse


def ip(node: object, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(string(node, path).strip())
    except ValueError:
        refuse(path, node, "not an IPv4 or IPv6 address")


# --- tables of field parsers -------------------------------------------------------------------


def fields(node: object, path: str, table: Mapping[str, Parser]) -> dict[str, Any]:
    """Parse a flat section through its table; absent keys are left to the model's defaults."""
    section = mapping(node, path, table)
    return {key: table[key](value, at(path, key)) for key, value in section.items()}


def optional(kind: type, table: Mapping[str, Parser]) -> Parser:
    """A section whose absence (or null) disables the feature; ``{}`` enables its defaults."""

    def parse(node: object, path: str) -> Any:
        return None if node is None else kind(**fields(node, path, table))

    return parse
