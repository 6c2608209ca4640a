"""The pod's resolv.conf as glibc's stub resolver reads it, and the names that stub then sends.

The DNS server answers whatever a workload's stub resolver puts on the wire, and the stub puts
on the wire a *sequence* of names built from the application's name and resolv.conf's search
list. To answer mesh names under every form a stub can produce, the server needs the same search
list (``search``), and tests need the same sequence (``stub_candidates``). Both follow glibc
(``resolv/res_init.c`` and ``res_search`` in ``resolv/res_query.c``), the resolver that
matters for the images a sidecar runs next to; musl differs only in corners noted below.

Pure apart from ``read_resolv_conf``, which only reads the file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

# glibc's MAXNS: nameservers past the third are silently ignored by every stub on the host.
MAX_NAMESERVERS = 3
# glibc's RES_MAXNDOTS: ``options ndots:N`` above this is clamped to it.
MAX_NDOTS = 15
DEFAULT_NDOTS = 1
COMMENT_CHARS = ("#", ";")


@dataclass(frozen=True)
class ResolvConf:
    """What a stub resolver takes from resolv.conf that changes which names it sends where.

    ``nameservers`` are kept as written (scoped IPv6 like ``fe80::1%eth0`` included) because
    the caller hands them to a socket, which understands the scope; an empty tuple means the
    file named none, and the caller applies glibc's fallback (the local host) if it wants one.
    ``search`` holds normalised domains: lower-case, no trailing dot.
    """

    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    ndots: int = DEFAULT_NDOTS


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf text with glibc's rules, so the result matches what the stub uses.

    - A keyword must start the line and be followed by a blank (glibc and musl both match with
      ``strncmp`` at the line start), so indented or unknown lines are ignored, not guessed at.
    - ``nameserver ADDR``: only addresses that parse count, and only the first three
      (``MAX_NAMESERVERS``); the rest are dropped as glibc drops them.
    - ``search`` and ``domain`` both set the search list and the last such line wins; a line
      with no value changes nothing (glibc skips it). ``domain x`` means ``search x``.
      ``search .`` yields an empty list: the root "domain" adds nothing to a name.
    - ``options ndots:N``: N is read like C's ``atoi`` (leading digits, garbage is 0) and
      clamped to 0..15, the range glibc's 4-bit field can hold. Later options override earlier.
    - Lines starting with ``#`` or ``;`` are comments. A ``#``/``;`` word later on a line also
      ends it: glibc would keep such words as search domains, but no name can ever be found
      under them, so dropping them only avoids useless queries.

    Environment overrides (``LOCALDOMAIN``, ``RES_OPTIONS``) and glibc's fallback of taking the
    search domain from the host name are deliberately not applied: the file is the input.
    """
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    ndots = DEFAULT_NDOTS
    for line in text.splitlines():
        words = _words(line)
        if len(words) < 2:
            continue  # blank, comment, or a keyword with no value: glibc ignores all three
        keyword, values = words[0], words[1:]
        if keyword == "nameserver":
            if len(nameservers) < MAX_NAMESERVERS and _is_address(values[0]):
                nameservers.append(values[0])
        elif keyword == "domain":
            search = _domains(values[:1])  # glibc takes the first word only
        elif keyword == "search":
            search = _domains(values)
        elif keyword == "options":
            for option in values:
                if option.startswith("ndots:"):
                    ndots = min(max(_atoi(option[len("ndots:") :]), 0), MAX_NDOTS)
    return ResolvConf(nameservers=tuple(nameservers), search=search, ndots=ndots)


def read_resolv_conf(path: str | Path = "/etc/resolv.conf") -> ResolvConf:
    """Read and parse a resolv.conf; a missing file is an error (the caller decides the
    fallback, since silently answering with no search list would break short names)."""
    return parse_resolv_conf(Path(path).read_text(encoding="utf-8", errors="replace"))


def stub_candidates(name: str, conf: ResolvConf) -> list[str]:
    """The names glibc's ``res_search`` queries for ``name``, in order, until one answers.

    - A trailing dot makes the name absolute: it is the only candidate.
    - With at least ``ndots`` dots the name is tried as-is first, then with each search domain.
    - With fewer dots each search domain is tried first and the bare name last.

    Candidates are wire names written without the root dot, in the case the application used
    (DNS is case-insensitive; the server lower-cases). Like glibc, nothing is de-duplicated: a
    repeated search domain is queried again. An empty search domain (the root; the parser never
    produces one, a hand-built conf may) queries the bare name, after which glibc does not try
    the bare name again at the end.
    """
    if not name or name == ".":
        return []
    if name.endswith("."):
        return [name[:-1]]
    tried_as_is = name.count(".") >= conf.ndots
    candidates = [name] if tried_as_is else []
    for domain in conf.search:
        domain = domain.rstrip(".")
        candidates.append(f"{name}.{domain}" if domain else name)
        tried_as_is = tried_as_is or not domain
    if not tried_as_is:
        candidates.append(name)
    return candidates


def _words(line: str) -> list[str]:
    """Blank-separated words up to the first comment word."""
    words: list[str] = []
    for word in line.split():
        if word.startswith(COMMENT_CHARS):
            break
        words.append(word)
    if words and line[:1].isspace():
        return []  # keywords must start the line
    return words


def _domains(values: list[str]) -> tuple[str, ...]:
    """Normalise search domains the way names are compared: lower-case, no root dot. The root
    itself (``.``) is dropped: glibc would query the bare name at its place in the list instead
    of last, a difference in order only. Order and repeats are kept: they are what the stub
    sends."""
    return tuple(domain for value in values if (domain := value.lower().rstrip(".")))


def _is_address(text: str) -> bool:
    """True for an IPv4 or IPv6 address, a scoped IPv6 one (``fe80::1%eth0``) included."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _atoi(text: str) -> int:
    """C's ``atoi``: an optional sign and the leading digits; anything else reads as 0."""
    sign, digits = 1, text
    if digits[:1] in ("+", "-"):
        sign, digits = (-1 if digits[0] == "-" else 1), digits[1:]
    end = 0
    while end < len(digits) and digits[end].isdigit():
        end += 1
    return sign * int(digits[:end]) if end else 0
