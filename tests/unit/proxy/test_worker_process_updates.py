"""What the supervisor sends a worker process for a new mesh: the whole mesh, or only the
services an endpoint update replaced (pickling every service per update would cost what the
mesh is). The worker side is tests/unit/proxy/config/test_diff.py's ``with_replaced``; the
e2e xDS tests run both ends with --concurrency 2."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

from support.services import http_service

from proxy.config.model import Endpoint, Mesh
from proxy.workers import WorkerProcess

A, B = http_service("a", "240.240.0.1"), http_service("b", "240.240.0.2")
MESH = Mesh(services=(A, B))


def sent_for(*meshes: Mesh) -> list[dict]:
    """The control messages a WorkerProcess that holds MESH sends for ``meshes``, in turn."""
    process = WorkerProcess(0, [], "off", "text")
    process._held = MESH
    sent: list[dict] = []

    async def request(message: dict) -> None:
        sent.append(message)

    process.request = request  # type: ignore[method-assign]  # the channel, recorded

    async def run() -> None:
        for mesh in meshes:
            await process.apply_mesh(mesh)

    asyncio.run(run())
    return sent


def test_an_endpoint_update_sends_only_the_replaced_service_and_a_new_mesh_sends_all():
    moved = dataclasses.replace(B, endpoints=(Endpoint(ipaddress.ip_address("10.0.0.9")),))
    update = dataclasses.replace(MESH, services=(A, moved), source="eds v2")
    reloaded = Mesh(services=(A, moved))  # a mesh file read again: a workload of its own
    first, second = sent_for(update, reloaded)
    assert first == {"op": "replace", "services": [(1, moved)], "source": "eds v2"}
    assert second == {"op": "mesh", "mesh": reloaded}
