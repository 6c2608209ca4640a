"""The path a policy matches, and the path the app is sent: the same normalised path, so no
spelling of a request can mean one thing to the policy and another to the app.

Steps, in order (Envoy's normalize_path + merge_slashes + path_with_escaped_slashes_action,
as Istio's DECODE_AND_MERGE_SLASHES configures them, plus the fragment rule):

1. the query (``?``) is kept aside, and a fragment (``#``, which a client must not send) is
   dropped: ``/admin#x`` is ``/admin`` (CVE-2021-39156 was a policy that took it for another
   path);
2. escaped slashes (``%2F``, ``%5C``, any case) are refused (``REJECT_REQUEST``, the
   default: 400), decoded (``UNESCAPE_AND_FORWARD``) or kept (``KEEP_UNCHANGED``) — left
   encoded, ``/public%2F..%2Fadmin`` would pass a
   policy on ``/admin`` that the app, decoding, then serves (CVE-2021-31920);
3. percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2: ``%61`` is ``a``,
   ``%2E`` is ``.``) and the others' hex digits upper-cased;
4. backslashes are slashes (some servers and all browsers treat them so);
5. runs of slashes are merged, and dot segments removed (RFC 3986 §5.2.4), never above the
   root: ``//a/./b/../c`` is ``/a/c``.

Paths stay case-sensitive; hosts are matched lowercase (``normal_host``). Pure.
"""

from __future__ import annotations

import enum
import re


class EscapedSlashes(enum.Enum):
    """What becomes of ``%2F`` and ``%5C`` in a path: Envoy's path_with_escaped_slashes_action
    names. KEEP_UNCHANGED is only for apps that need them and have no policy on paths (the
    config refuses it with one)."""

    REJECT_REQUEST = "REJECT_REQUEST"  # 400
    UNESCAPE_AND_FORWARD = "UNESCAPE_AND_FORWARD"  # "/" and "\\", then normalised
    KEEP_UNCHANGED = "KEEP_UNCHANGED"


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_ESCAPED_SLASH = re.compile(rb"%(2[Ff]|5[Cc])")
_SLASHES = re.compile(rb"/{2,}")
_AUTHORITY_END = re.compile(rb"[/?]")
# What a path that is already normal has none of (most requests: one search, no copies).
_NEEDS_WORK = re.compile(rb"[%\\#]|//|/\.")


class PathRejected(ValueError):
    """The path may not be forwarded (escaped slashes under REJECT): answer 400."""


def normalize(
    target: bytes, escaped: EscapedSlashes = EscapedSlashes.REJECT_REQUEST
) -> tuple[bytes, bytes]:
    """(normalised path, query with its ``?`` or b"") of a request target; PathRejected."""
    if target == b"*":
        return target, b""
    if b"#" in target:  # first: a "?" in the fragment is the fragment's, not a query
        target = target.partition(b"#")[0]
    if target[:1] != b"/" and b"://" in target:  # absolute form: its path
        rest = target.split(b"://", 1)[1]
        end = _AUTHORITY_END.search(rest)  # "http://h?x=/a" has the path "/", not "/a"
        target = rest[end.start() :] if end is not None else b""
        if target[:1] != b"/":
            target = b"/" + target
    path, question, query = target.partition(b"?")
    if path[:1] == b"/" and _NEEDS_WORK.search(path) is None:
        return path, question + query
    query = question + query
    if escaped is not EscapedSlashes.KEEP_UNCHANGED and _ESCAPED_SLASH.search(path):
        if escaped is EscapedSlashes.REJECT_REQUEST:
            raise PathRejected("escaped slash in the path")
        path = _ESCAPED_SLASH.sub(_unescape_slash, path)
    path = _ESCAPE.sub(_decode_unreserved, path)
    path = path.replace(b"\\", b"/")
    path = _SLASHES.sub(b"/", path)
    return remove_dot_segments(path), query


def normal_target(target: bytes, escaped: EscapedSlashes = EscapedSlashes.REJECT_REQUEST) -> bytes:
    """The request target to forward: ``target`` itself when it is already normal (no copy),
    else its normalised path and its query; PathRejected."""
    path = target.partition(b"?")[0]
    if path[:1] == b"/" and _NEEDS_WORK.search(target) is None:
        return target
    path, query = normalize(target, escaped)
    return path + query


def _unescape_slash(match: re.Match[bytes]) -> bytes:
    return b"/" if match.group(1) in (b"2F", b"2f") else b"\\"


def _decode_unreserved(match: re.Match[bytes]) -> bytes:
    byte = int(match.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + match.group(1).upper()


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 on an absolute path (``..`` never climbs above ``/``)."""
    segments = path.split(b"/")
    kept: list[bytes] = []
    for segment in segments[1:] if path.startswith(b"/") else segments:
        if segment == b".":
            continue
        if segment == b"..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    trailing = segments[-1] in (b".", b"..")  # "/a/b/.." is the directory "/a/"
    normal = b"/" + b"/".join(kept)
    if trailing and not normal.endswith(b"/"):
        normal += b"/"
    return normal


def normal_host(authority: bytes | None) -> bytes | None:
    """The host a policy matches: lowercase, without a trailing dot."""
    if authority is None:
        return None
    host = authority.lower()
    head, colon, port = host.rpartition(b":")
    if colon and port.isdigit() and head.endswith(b"."):  # "example.com.:8080"
        return head.rstrip(b".") + colon + port
    return host.rstrip(b".")
