"""End-to-end proof that interception works, as Istio's validation init container does.

Listen on the outbound port, connect as an ordinary (non-proxy) user to an address that the
rules capture and that nothing else answers (the RFC 5737 / RFC 3849 documentation ranges),
and check that the connection arrived on our listener with SO_ORIGINAL_DST naming the address
we dialled. Anything else is a failure with the reason spelled out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import time
from dataclasses import dataclass

from detour_common.original_dst import original_destination
from init.config import CaptureConfig

# Documentation ranges: never routed on a real network, so a reply can only come from us.
_PROBE_ADDRESSES = {
    4: ("192.0.2.1", "198.51.100.1", "203.0.113.1"),
    6: ("2001:db8::1", "2001:db8:1::1"),
}
_PROBE_PORTS = (15999, 8080, 80)
NOBODY = 65534


class ValidationFailed(RuntimeError):
    """Interception is not working; the message says what was seen."""


class NothingCaptured(ValidationFailed):
    """The config captures no outbound destination of this family, so there is nothing to prove."""


class NoRoute(ValidationFailed):
    """The probe address is unroutable here, so the rules were never consulted."""


@dataclass(frozen=True)
class Probe:
    family: int
    address: str
    port: int


def choose_probe(config: CaptureConfig, family: int) -> Probe:
    """A destination the config captures, so a redirect is expected. Pure."""
    excluded_nets = [n for n in config.exclude_outbound_cidrs if n.version == family]
    selection = config.outbound_cidrs.for_family(family)
    if selection.every:
        candidates = [ipaddress.ip_address(a) for a in _PROBE_ADDRESSES[family]]
    else:
        candidates = []
        for network in selection.networks:
            # The network's first host, else the first address after each excluded block in it.
            candidates.append(network[1] if network.num_addresses > 2 else network[0])
            candidates.extend(
                ex.broadcast_address + 1
                for ex in excluded_nets
                if ex.subnet_of(network) and ex.broadcast_address < network.broadcast_address
            )
    address = next(
        (a for a in candidates if not any(a in n for n in excluded_nets) and not a.is_loopback),
        None,
    )
    if address is None:
        raise NothingCaptured(f"the config captures no IPv{family} destination to probe")
    ports = _PROBE_PORTS if config.outbound_ports.every else config.outbound_ports.ports
    port = next((p for p in ports if p not in config.exclude_outbound_ports), None)
    if port is None:
        raise ValidationFailed("the config captures no outbound port to probe")
    return Probe(family, str(address), port)


def run_probe(config: CaptureConfig, probe: Probe, timeout: float = 3.0) -> str:
    """Dial ``probe`` as a non-proxy user and prove it reached the outbound listener.

    Returns a one-line success description; raises ValidationFailed otherwise.
    """
    family = socket.AF_INET6 if probe.family == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            listener.bind(("::" if probe.family == 6 else "0.0.0.0", config.outbound_port))
        except OSError as err:
            raise ValidationFailed(
                f"cannot listen on outbound port {config.outbound_port} ({err.strerror}); "
                "validation must run before the sidecar starts"
            ) from None
        listener.listen(8)
        child = _dial_as_app(config, probe, timeout)
        try:
            return _await_redirect(listener, probe, child, timeout)
        finally:
            _reap(child)
    finally:
        listener.close()


def _app_identity(config: CaptureConfig) -> tuple[int, int]:
    """Our own uid/gid if they are not the proxy's, else nobody's: the client must be an app."""
    uid, gid = os.geteuid(), os.getegid()
    if uid in config.proxy_uids or gid in config.proxy_gids:
        return NOBODY, NOBODY
    return uid, gid


def _dial_as_app(config: CaptureConfig, probe: Probe, timeout: float) -> tuple[int, int]:
    """Fork a client that connects to the probe address; returns (pid, read end of its report)."""
    uid, gid = _app_identity(config)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become the app, dial, report the outcome, wait to be reaped
        os.close(read_end)
        status = 0
        try:
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            family = socket.AF_INET6 if probe.family == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as client:
                client.settimeout(timeout)
                client.connect((probe.address, probe.port))
                os.write(write_end, b"connected\n")
                client.recv(1)  # hold the connection until the parent has looked at it
        except BaseException as err:  # report everything: the parent turns it into a reason
            os.write(write_end, f"error {type(err).__name__}: {err}\n".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end


def _await_redirect(
    listener: socket.socket, probe: Probe, child: tuple[int, int], timeout: float
) -> str:
    _, report = child
    deadline = time.monotonic() + timeout
    watched: list[object] = [listener, report]
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(watched, [], [], remaining)
        if listener in ready:
            conn, peer = listener.accept()
            with conn:
                original = original_destination(conn)
            if original == (probe.address, probe.port):
                return (
                    f"IPv{probe.family}: a connection to {probe.address}:{probe.port} from "
                    f"{peer[0]} arrived on port {listener.getsockname()[1]} with "
                    "SO_ORIGINAL_DST intact"
                )
            raise ValidationFailed(
                f"IPv{probe.family}: a connection reached the outbound listener but its original "
                f"destination was {original}, not {probe.address}:{probe.port}"
            )
        if report in ready:
            line = os.read(report, 512).decode(errors="replace").strip()
            if line.startswith("error TimeoutError"):
                # The client's connect timed out on the same clock as this wait: whichever
                # fires first, it means the SYN left for the network instead of our listener.
                raise _not_redirected(probe, timeout)
            if line.startswith("error"):
                kind = NoRoute if "unreachable" in line.lower() else ValidationFailed
                raise kind(
                    f"IPv{probe.family}: connecting to {probe.address}:{probe.port} failed "
                    f"({line.removeprefix('error ')}) instead of being redirected"
                )
            watched.remove(report)  # "connected" (or EOF): only the listener can tell us more
    raise _not_redirected(probe, timeout)


def _not_redirected(probe: Probe, timeout: float) -> ValidationFailed:
    return ValidationFailed(
        f"IPv{probe.family}: no connection to {probe.address}:{probe.port} reached the outbound "
        f"port within {timeout:g}s: traffic is not being redirected"
    )


def _reap(child: tuple[int, int]) -> None:
    pid, report = child
    os.close(report)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    os.waitpid(pid, 0)
