"""The interception configuration: parsed once from flags and environment, validated whole.

Every value an operator can set arrives here as text (a flag or a ``DETOUR_*`` variable),
is checked, and leaves as a typed field of a frozen :class:`CaptureConfig`. Nothing later in
``init`` ever parses a string again, and a bad value is refused before anything is touched,
with a message naming the option and the value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["REDIRECT", "TPROXY"]
IPv6Setting = Literal["auto", "on", "off"]
BackendChoice = Literal["auto", "legacy", "nft"]
LogFormat = Literal["text", "json"]

# The sidecar's own listeners (admin, merged metrics, readiness, Envoy-style stats): inbound
# traffic to them is never captured, whatever the operator asks, so health checks and scrapes
# reach the proxy itself rather than looping through its inbound listener.
SIDECAR_OWN_PORTS: tuple[int, ...] = (15000, 15020, 15021, 15090)

# Source address the proxy uses when it forwards an inbound connection to the local app, so
# the app's reply is recognisable and not captured again (Istio's choice, kept for operators).
INBOUND_PASSTHROUGH_V4 = ipaddress.ip_address("127.0.0.6")
INBOUND_PASSTHROUGH_V6 = ipaddress.ip_address("::6")


_IFNAME = re.compile(r"^[^/:\s]{1,15}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A value the operator gave is unusable; ``option`` and ``value`` say which."""

    def __init__(self, option: str, value: str, reason: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"{option}={value!r}: {reason}")


@dataclass(frozen=True)
class PortSelection:
    """Ports to capture: every port (``*``) or an explicit, possibly empty, list."""

    every: bool
    ports: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.every and not self.ports


@dataclass(frozen=True)
class CidrSelection:
    """Destinations to capture: every address (``*``) or an explicit list of networks."""

    every: bool
    networks: tuple[IPNetwork, ...] = ()

    def for_family(self, family: int) -> CidrSelection:
        return CidrSelection(self.every, tuple(n for n in self.networks if n.version == family))


@dataclass(frozen=True)
class CaptureConfig:
    """What to intercept in one network namespace. Defaults follow DESIGN.md (Istio's numbers)."""

    proxy_uids: tuple[int, ...] = (1337,)
    proxy_gids: tuple[int, ...] = (1337,)
    outbound_port: int = 15001
    inbound_port: int = 15006
    mode: Mode = "REDIRECT"
    inbound_ports: PortSelection = field(default_factory=lambda: PortSelection(every=True))
    exclude_inbound_ports: tuple[int, ...] = ()
    outbound_ports: PortSelection = field(default_factory=lambda: PortSelection(every=True))
    exclude_outbound_ports: tuple[int, ...] = ()
    outbound_cidrs: CidrSelection = field(default_factory=lambda: CidrSelection(every=True))
    exclude_outbound_cidrs: tuple[IPNetwork, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    capture_dns: bool = False
    dns_port: int = 15053
    ipv6: IPv6Setting = "auto"
    drop_invalid: bool = False
    backend: BackendChoice = "auto"
    log_format: LogFormat = "text"

    @property
    def excluded_inbound_ports(self) -> tuple[int, ...]:
        """Inbound ports never captured: the sidecar's own plus the operator's, sorted, unique."""
        return tuple(sorted(set(SIDECAR_OWN_PORTS) | set(self.exclude_inbound_ports)))


# --- option table -------------------------------------------------------------------------
# One row per option: the flag name, the config field, and the parser that turns its text into
# the field's value. The CLI builds its flags from this table and the environment is read with
# the same names, so a flag and its DETOUR_* twin can never drift apart.


def _is_number(text: str) -> bool:
    """Plain ASCII digits only: int() would also take '+80', '15_001' and '١٣٣٧'."""
    return text.isascii() and text.isdigit()


def _port(option: str, text: str) -> int:
    if not _is_number(text.strip()):
        raise ConfigError(option, text, "not a port number (1-65535)")
    value = int(text.strip())
    if not 1 <= value <= 65535:
        raise ConfigError(option, text, "port out of range (1-65535)")
    return value


def _port_list(option: str, text: str) -> tuple[int, ...]:
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    ports = []
    for item in items:
        try:
            ports.append(_port(option, item))
        except ConfigError:
            raise ConfigError(option, text, f"{item!r} is not a port number (1-65535)") from None
    return tuple(sorted(set(ports)))


def _port_selection(option: str, text: str) -> PortSelection:
    if text.strip() == "*":
        return PortSelection(every=True)
    return PortSelection(every=False, ports=_port_list(option, text))


def _network(option: str, whole: str, item: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ConfigError(option, whole, f"{item!r} is not an IPv4 or IPv6 CIDR") from None


def _cidr_list(option: str, text: str) -> tuple[IPNetwork, ...]:
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    networks = {_network(option, text, item) for item in items}
    return tuple(sorted(networks, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def _cidr_selection(option: str, text: str) -> CidrSelection:
    if text.strip() == "*":
        return CidrSelection(every=True)
    return CidrSelection(every=False, networks=_cidr_list(option, text))


def _id_list(option: str, text: str) -> tuple[int, ...]:
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise ConfigError(option, text, "at least one numeric id is required")
    ids = []
    for item in items:
        if not _is_number(item) or int(item) > 0xFFFFFFFE:
            raise ConfigError(option, text, f"{item!r} is not a numeric id (0-4294967294)")
        ids.append(int(item))
    return tuple(sorted(set(ids)))


def _interfaces(option: str, text: str) -> tuple[str, ...]:
    names = [item for item in (part.strip() for part in text.split(",")) if item]
    for name in names:
        if not _IFNAME.match(name) or name in {".", ".."}:
            raise ConfigError(
                option,
                text,
                f"{name!r} is not an interface name (1-15 chars, no '/', ':' or spaces)",
            )
    return tuple(dict.fromkeys(names))


def _bool(option: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(option, text, "expected true or false")


def _choice(*allowed: str):
    def parse(option: str, text: str) -> str:
        value = text.strip()
        for candidate in allowed:
            if value.lower() == candidate.lower():
                return candidate
        raise ConfigError(option, text, f"expected one of {', '.join(allowed)}")

    return parse


@dataclass(frozen=True)
class Option:
    """One operator-facing option: ``--flag`` and ``DETOUR_FLAG`` both set ``field``."""

    flag: str
    field: str
    parse: object
    help: str
    is_switch: bool = False

    @property
    def env(self) -> str:
        return "DETOUR_" + self.flag.removeprefix("--").replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("--proxy-uid", "proxy_uids", _id_list, "uids whose traffic is never captured (1337)"),
    Option("--proxy-gid", "proxy_gids", _id_list, "gids whose traffic is never captured (1337)"),
    Option("--outbound-port", "outbound_port", _port, "proxy outbound listener port (15001)"),
    Option("--inbound-port", "inbound_port", _port, "proxy inbound listener port (15006)"),
    Option("--mode", "mode", _choice("REDIRECT", "TPROXY"), "inbound interception mode"),
    Option(
        "--inbound-ports", "inbound_ports", _port_selection, "inbound ports to capture, * = all"
    ),
    Option("--exclude-inbound-ports", "exclude_inbound_ports", _port_list, "inbound ports to skip"),
    Option("--outbound-ports", "outbound_ports", _port_selection, "outbound ports, * = all"),
    Option(
        "--exclude-outbound-ports", "exclude_outbound_ports", _port_list, "outbound ports to skip"
    ),
    Option(
        "--outbound-cidrs", "outbound_cidrs", _cidr_selection, "destinations to capture, * = all"
    ),
    Option(
        "--exclude-outbound-cidrs", "exclude_outbound_cidrs", _cidr_list, "destinations to skip"
    ),
    Option("--exclude-interfaces", "exclude_interfaces", _interfaces, "interfaces never captured"),
    Option("--capture-dns", "capture_dns", _bool, "send UDP/TCP 53 to the DNS proxy", True),
    Option("--dns-port", "dns_port", _port, "sidecar DNS proxy port (15053)"),
    Option("--ipv6", "ipv6", _choice("auto", "on", "off"), "install ip6tables rules too"),
    Option("--drop-invalid", "drop_invalid", _bool, "drop conntrack-INVALID packets", True),
    Option("--backend", "backend", _choice("auto", "legacy", "nft"), "iptables backend"),
    Option("--log-format", "log_format", _choice("text", "json"), "log format"),
)


def parse_config(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> CaptureConfig:
    """Build the config from flag values (by field name) and the environment; flags win.

    ``flags`` holds the raw text of each flag the operator gave (``None`` when absent).
    Raises :class:`ConfigError` for the first bad value, naming the flag or variable.
    """
    values: dict[str, object] = {}
    names = {option.field: option.flag for option in OPTIONS}
    for option in OPTIONS:
        raw = flags.get(option.field)
        name = option.flag
        if raw is None and option.env in environ:
            raw, name = environ[option.env], option.env
        if raw is not None:
            values[option.field] = option.parse(name, raw)
            names[option.field] = name
    config = CaptureConfig(**values)
    check_consistency(config, names)
    return config


def check_consistency(config: CaptureConfig, names: Mapping[str, str] | None = None) -> None:
    """Refuse combinations that are each valid alone but cannot work together.

    ``names`` maps a field to the flag or variable it came from, so the error names what the
    operator actually wrote.
    """
    names = names or {option.field: option.flag for option in OPTIONS}
    own = {
        names["outbound_port"]: config.outbound_port,
        names["inbound_port"]: config.inbound_port,
    }
    if config.capture_dns:
        own[names["dns_port"]] = config.dns_port
    seen: dict[int, str] = {}
    for option, port in own.items():
        if port in seen:
            raise ConfigError(option, str(port), f"same port as {seen[port]}")
        if port in SIDECAR_OWN_PORTS:
            raise ConfigError(option, str(port), "reserved for the sidecar's admin/metrics ports")
        seen[port] = option
