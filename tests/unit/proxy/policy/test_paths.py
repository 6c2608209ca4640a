"""proxy.policy.paths: the path a policy matches is the path the app is sent.

Each case is a request target as a client may write it and what the policy and the app then
see: the normalised path (query excluded) and the query, under each ``escaped_slashes`` mode
(``REJECTED`` where the request is answered 400 instead).
"""

from __future__ import annotations

import pytest

from proxy.policy.paths import (
    EscapedSlashes,
    PathRejected,
    normal_host,
    normal_target,
    normalize,
    remove_dot_segments,
)

REJECT = EscapedSlashes.REJECT_REQUEST
UNESCAPE = EscapedSlashes.UNESCAPE_AND_FORWARD
KEEP = EscapedSlashes.KEEP_UNCHANGED
MODES = (REJECT, UNESCAPE, KEEP)
REJECTED = "REJECTED"

Expected = tuple[bytes, bytes] | str

# (id, target, {mode: (path, query) | REJECTED}); one value for all three modes when the mode
# cannot matter (no escaped slash in the path).
CASES: list[tuple[str, bytes, Expected | dict[EscapedSlashes, Expected]]] = [
    # already normal
    ("root", b"/", (b"/", b"")),
    ("plain", b"/a/b", (b"/a/b", b"")),
    ("trailing slash kept", b"/a/b/", (b"/a/b/", b"")),
    ("dot inside a name", b"/a/.hidden/b.txt", (b"/a/.hidden/b.txt", b"")),
    ("dots inside a name", b"/a/..b/c..", (b"/a/..b/c..", b"")),
    # merged slashes
    ("double slash", b"//a//b", (b"/a/b", b"")),
    ("many slashes", b"/a////b///", (b"/a/b/", b"")),
    # dot segments (RFC 3986 5.2.4)
    ("dot segment", b"/a/./b", (b"/a/b", b"")),
    ("leading dot segment", b"/./a", (b"/a", b"")),
    ("dot-dot segment", b"/a/b/../c", (b"/a/c", b"")),
    ("dot-dot above root", b"/../a", (b"/a", b"")),
    ("dot-dot far above root", b"/a/../../../b", (b"/b", b"")),
    ("only dot-dot", b"/..", (b"/", b"")),
    ("trailing dot-dot is the directory", b"/a/b/..", (b"/a/", b"")),
    ("trailing dot is the directory", b"/a/b/.", (b"/a/b/", b"")),
    ("slashes, dots together", b"//a/./b/../c", (b"/a/c", b"")),
    ("double slash then dot-dot", b"/a//../b", (b"/b", b"")),
    # backslashes are slashes
    ("backslash", b"/a\\b", (b"/a/b", b"")),
    ("backslash dot-dot", b"/public\\..\\admin", (b"/admin", b"")),
    ("backslash merged", b"/a\\\\b", (b"/a/b", b"")),
    # escaped slashes, each spelling, under each mode
    ("%2F", b"/a%2Fb", {REJECT: REJECTED, UNESCAPE: (b"/a/b", b""), KEEP: (b"/a%2Fb", b"")}),
    ("%2f", b"/a%2fb", {REJECT: REJECTED, UNESCAPE: (b"/a/b", b""), KEEP: (b"/a%2Fb", b"")}),
    ("%5C", b"/a%5Cb", {REJECT: REJECTED, UNESCAPE: (b"/a/b", b""), KEEP: (b"/a%5Cb", b"")}),
    ("%5c", b"/a%5cb", {REJECT: REJECTED, UNESCAPE: (b"/a/b", b""), KEEP: (b"/a%5Cb", b"")}),
    (
        "%2F dot-dot kept",
        b"/a/%2F../b",
        {REJECT: REJECTED, UNESCAPE: (b"/b", b""), KEEP: (b"/a/%2F../b", b"")},
    ),
    ("escaped slash in the query only", b"/a?x=%2F", (b"/a", b"?x=%2F")),
    ("escaped slash in the fragment only", b"/a#%2F", (b"/a", b"")),
    # percent-encoding
    ("unreserved decoded", b"/%61%62c", (b"/abc", b"")),
    ("unreserved decoded, any case", b"/%7e%7E%2d%5F", (b"/~~-_", b"")),
    ("other escapes upper-cased", b"/a%3ab%3Fc", (b"/a%3Ab%3Fc", b"")),
    ("space stays encoded", b"/a%20b", (b"/a%20b", b"")),
    ("double encoding decoded once", b"/a%252Fb", (b"/a%252Fb", b"")),
    ("double-encoded dot", b"/a/%252E%252E/b", (b"/a/%252E%252E/b", b"")),
    ("encoded dot-dot removed", b"/a/%2E%2E/b", (b"/b", b"")),
    ("encoded dot-dot lowercase", b"/a/b/%2e%2e", (b"/a/", b"")),
    ("encoded dot", b"/a/%2E/b", (b"/a/b", b"")),
    ("half-encoded dot-dot", b"/a/.%2E/b", (b"/b", b"")),
    ("not an escape left alone", b"/a%zzb%", (b"/a%zzb%", b"")),
    # query: kept, never part of the path, never normalised
    ("query kept", b"/a?x=1&y=2", (b"/a", b"?x=1&y=2")),
    ("query with dots and slashes", b"/a/../b?next=//c/../d", (b"/b", b"?next=//c/../d")),
    ("empty query", b"/a?", (b"/a", b"?")),
    # fragment: dropped (a client must not send one)
    ("fragment", b"/admin#x", (b"/admin", b"")),
    ("fragment after a query", b"/a?x=1#frag", (b"/a", b"?x=1")),
    ("question mark inside a fragment", b"/a#frag?x=1", (b"/a", b"")),
    ("fragment that looks like a path", b"/public#/../admin", (b"/public", b"")),
    # absolute form: its path
    ("absolute form", b"http://example.com/a/../b?q=1", (b"/b", b"?q=1")),
    ("absolute form, no path", b"http://example.com", (b"/", b"")),
    ("absolute form, query only", b"http://example.com?next=/admin", (b"/", b"?next=/admin")),
    ("absolute form, fragment only", b"http://example.com#/admin", (b"/", b"")),
    ("absolute form https", b"https://example.com:8443//a", (b"/a", b"")),
    # asterisk form (OPTIONS *)
    ("asterisk", b"*", (b"*", b"")),
]


def _expectations() -> list[tuple[str, bytes, EscapedSlashes, Expected]]:
    rows = []
    for name, target, expected in CASES:
        for mode in MODES:
            want = expected[mode] if isinstance(expected, dict) else expected
            rows.append((f"{name}-{mode.name}", target, mode, want))
    return rows


ROWS = _expectations()


@pytest.mark.parametrize(
    ("target", "mode", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_normalize(target: bytes, mode: EscapedSlashes, expected: Expected) -> None:
    if expected == REJECTED:
        with pytest.raises(PathRejected):
            normalize(target, mode)
        return
    assert normalize(target, mode) == expected


@pytest.mark.parametrize(
    ("target", "mode", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_normal_target_is_the_path_and_query(
    target: bytes, mode: EscapedSlashes, expected: Expected
) -> None:
    """What is forwarded to the app: the same normalised path, and the query."""
    if expected == REJECTED:
        with pytest.raises(PathRejected):
            normal_target(target, mode)
        return
    assert isinstance(expected, tuple)
    assert normal_target(target, mode) == expected[0] + expected[1]


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
@pytest.mark.parametrize(
    "target", [b"/", b"/a/b", b"/a/b?x=1&y=/z", b"/a/b.c/d_e-f~g", b"/api/v1/items/"]
)
def test_an_already_normal_target_is_returned_itself(target: bytes, mode: EscapedSlashes) -> None:
    """No copy for the common case: the very object comes back."""
    target = bytes(bytearray(target))  # a fresh object, not an interned constant
    assert normal_target(target, mode) is target


def test_the_default_mode_rejects_escaped_slashes() -> None:
    with pytest.raises(PathRejected):
        normalize(b"/a%2Fb")
    with pytest.raises(PathRejected):
        normal_target(b"/a%2Fb")


def test_path_rejected_is_a_value_error() -> None:
    assert issubclass(PathRejected, ValueError)


def test_normalising_twice_changes_nothing() -> None:
    """The forwarded target is already normal: a second sidecar (or the app) normalising it
    again finds the same path, so policy and app agree."""
    for _name, target, _expected in CASES:
        for mode in (UNESCAPE, KEEP):
            once = normal_target(target, mode)
            assert normal_target(once, mode) == once, target


# --- the Istio advisories --------------------------------------------------------------------


@pytest.mark.parametrize("target", [b"/public%2F..%2Fadmin", b"/public%5C..%5Cadmin"])
def test_cve_2021_31920_reject_request_refuses_escaped_slashes(target: bytes) -> None:
    """ISTIO-SECURITY-2021-008: a DENY on /admin* was passed by /public%2F..%2Fadmin, which
    the app decoded to /admin. REJECT_REQUEST (the default) answers 400 instead."""
    with pytest.raises(PathRejected):
        normalize(target, REJECT)
    with pytest.raises(PathRejected):
        normal_target(target, REJECT)


@pytest.mark.parametrize(
    "target",
    [
        b"/public%2F..%2Fadmin",
        b"/public%5C..%5Cadmin",
        b"/public%2f..%2fadmin",
        b"/public%5c..%5cadmin",
    ],
)
def test_cve_2021_31920_unescape_and_forward_gives_admin(target: bytes) -> None:
    """UNESCAPE_AND_FORWARD decodes first, so the policy sees the /admin the app serves."""
    assert normalize(target, UNESCAPE) == (b"/admin", b"")
    assert normal_target(target, UNESCAPE) == b"/admin"


@pytest.mark.parametrize("target", [b"/admin#anything", b"/admin#", b"/admin?#x", b"/admin#?a=b"])
def test_cve_2021_39156_a_fragment_is_not_part_of_the_path(target: bytes) -> None:
    """ISTIO-SECURITY-2021-008 too: /admin#anything was not matched by a policy on /admin
    although the app served /admin. The fragment is dropped."""
    for mode in MODES:
        path, _query = normalize(target, mode)
        assert path == b"/admin"
        assert normal_target(target, mode).partition(b"?")[0] == b"/admin"


# --- remove_dot_segments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/a/b/c/./../../g", b"/a/g"),  # RFC 3986 5.2.4's own example
        (b"/mid/content=5/../6", b"/mid/6"),  # and its second
        (b"/", b"/"),
        (b"/.", b"/"),
        (b"/..", b"/"),
        (b"/../../..", b"/"),
        (b"/a/..", b"/"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/a/./b/", b"/a/b/"),
        (b"/..a/b..", b"/..a/b.."),
    ],
)
def test_remove_dot_segments(path: bytes, expected: bytes) -> None:
    assert remove_dot_segments(path) == expected


# --- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        (b"example.com", b"example.com"),
        (b"Example.COM", b"example.com"),
        (b"example.com.", b"example.com"),
        (b"EXAMPLE.com.", b"example.com"),
        (b"Example.com:8080", b"example.com:8080"),
        (b"Example.com.:8080", b"example.com:8080"),
        (b"[::1]:8080", b"[::1]:8080"),
        (b"[FD00::1]", b"[fd00::1]"),
        (b"10.0.0.1:80", b"10.0.0.1:80"),
        (None, None),
    ],
)
def test_normal_host(authority: bytes | None, expected: bytes | None) -> None:
    assert normal_host(authority) == expected
