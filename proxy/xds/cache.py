"""The last applied xDS snapshot, kept on disk for a start while the control plane is down.

Written after every applied mesh (atomically: a temporary file renamed over the old one, mode
0600, as it may hold names an operator does not want world-readable) and read once at start.
The format is JSON: per type URL, the accepted version and the resources as base64 protobuf
``Any`` (the bytes the control plane sent, so nothing is lost in a round trip). A file that
does not read back whole is ignored with a warning: the sidecar then waits for the control
plane, as it would without a cache.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message

from proxy.xds.resources import Refusal, resource_name, unpack

log = logging.getLogger("detour.xds")
FORMAT = "detour-xds-cache/1"


@dataclass(frozen=True)
class CachedType:
    version: str
    resources: dict[str, Message]


def save(path: Path, types: dict[str, CachedType]) -> None:
    document = {
        "format": FORMAT,
        "types": {
            type_url: {
                "version": cached.version,
                "resources": [_packed(message) for message in cached.resources.values()],
            }
            for type_url, cached in types.items()
        },
    }
    staged = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        json.dump(document, stream)
    staged.replace(path)


def _packed(message: Message) -> str:
    packed = AnyMessage()
    packed.Pack(message)
    return base64.b64encode(packed.SerializeToString()).decode()


def load(path: Path, classes: dict[str, type[Message]]) -> dict[str, CachedType] | None:
    """The cached types, or None when there is no usable cache (logged)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("xDS cache %s unreadable, ignored: %s", path, err)
        return None
    try:
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
        found: dict[str, CachedType] = {}
        for type_url, entry in document["types"].items():
            messages = {}
            for text in entry["resources"]:
                packed = AnyMessage()
                packed.ParseFromString(base64.b64decode(text))
                message = unpack(packed, classes[type_url], type_url)
                messages[resource_name(message)] = message
            found[type_url] = CachedType(str(entry["version"]), messages)
        return found
    except (KeyError, TypeError, ValueError, AttributeError, Refusal) as err:
        log.warning("xDS cache %s does not read back, ignored: %r", path, err)
        return None
