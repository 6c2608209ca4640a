"""``detour-ebpf validate``: the same end-to-end proof as ``detour-init validate``, in a cgroup.

A child process joins the cgroup (and, with ``--netns``, the pod's network namespace), then runs
init's own probe: listen on the outbound port, connect as an ordinary user to a documentation
address the configuration captures, and check that the connection arrived on the listener with
SO_ORIGINAL_DST naming the address dialled — answered here by the getsockopt program. The child
keeps this process out of the cgroup, and the probe is init's code, not a copy.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

from init.config import CaptureConfig
from init.validate import NoRoute, NothingCaptured, ValidationFailed, choose_probe, run_probe
from interceptor import loader

__all__ = ["ValidationFailed", "validate"]

CLONE_NEWNET = 0x40000000


def validate(
    cgroup: str, config: CaptureConfig, timeout: float, netns: str | None = None
) -> Iterator[str]:
    """Yield one line per family proved; raise ValidationFailed with the reason otherwise."""
    path, pins = loader.context(cgroup)
    if not pins.is_dir():
        raise ValidationFailed(
            f"nothing is attached to {path}: run detour-ebpf attach --cgroup {path}"
        )
    attachment = next((a for a in loader.status() if a.pins == pins), None)
    if attachment is None or not attachment.healthy:
        missing = [k for k, ok in (attachment.programs if attachment else {}).items() if not ok]
        raise ValidationFailed(
            f"the attachment on {path} is broken (not attached: {', '.join(missing)}): "
            "detach and attach again"
        )
    families = (4, 6) if config.ipv6 != "off" else (4,)
    for family in families:
        try:
            yield _probe_in_cgroup(path, netns, config, family, timeout)
        except (NoRoute, NothingCaptured) as err:
            if family == 4 or config.ipv6 == "on":
                raise
            yield f"IPv6 not validated: {err}"


def _probe_in_cgroup(
    cgroup: Path, netns: str | None, config: CaptureConfig, family: int, timeout: float
) -> str:
    """Run init's probe in a child inside ``cgroup``; its result comes back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: join the pod, probe, report "ok <line>" or "<kind> <reason>", exit
        os.close(read_end)
        try:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            if netns is not None:
                _enter_netns(netns)
            report = "ok " + run_probe(config, choose_probe(config, family), timeout)
        except ValidationFailed as err:
            report = f"{type(err).__name__} {err}"
        except BaseException as err:  # report everything: the parent turns it into a reason
            report = f"ValidationFailed {type(err).__name__}: {err}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    kind, _, text = b"".join(chunks).decode(errors="replace").partition(" ")
    if kind == "ok":
        return text
    raise {"NoRoute": NoRoute, "NothingCaptured": NothingCaptured}.get(kind, ValidationFailed)(
        text or "the probe process died without a report"
    )


def _enter_netns(netns: str) -> None:
    """setns(2) into a network namespace given by name (/run/netns/NAME) or path."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise ValidationFailed(
                f"cannot enter network namespace {path}: {os.strerror(ctypes.get_errno())}"
            )
    finally:
        os.close(fd)
