"""An HTTP/2 (prior knowledge, h2c) backend for the HTTP/2 tests, on asyncio and the h2
library: it knows nothing of a mesh. Run with the project's .venv python.

    h2_peers.py serve PORT LABEL
        Every request is answered with JSON {"label", "method", "path", "headers",
        "body_bytes", "protocol": "HTTP/2", "connections"} once its body ended. Prints "ready".
        The path steers it: "/reset" resets the stream (RST_STREAM) instead of answering,
        "/reset-mid" resets it after the head and part of the body, "/delay/S" answers after S
        seconds, "/hang" never answers: it prints "request /hang" when the request ended and
        "cancelled /hang" when the client resets that stream (the only lines it prints, so
        the pipe of a peer nobody reads never fills).
"""

from __future__ import annotations

import asyncio
import json
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


class _Server(asyncio.Protocol):
    connections = 0

    def __init__(self, label: str) -> None:
        self.label = label
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.requests: dict[int, dict] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _Server.connections += 1
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = {"headers": event.headers, "size": 0}
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id]["size"] += len(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._steer(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                request = self.requests.pop(event.stream_id, None)
                if request is not None and dict(request["headers"])[":path"] == "/hang":
                    print("cancelled /hang", flush=True)
        self.transport.write(self.conn.data_to_send())

    def _steer(self, stream_id: int) -> None:
        request = self.requests[stream_id]
        path = dict(request["headers"])[":path"]
        if path == "/reset":
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == "/reset-mid":
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-length", "1000")])
            self.conn.send_data(stream_id, b"x" * 100)
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == "/hang":
            print("request /hang", flush=True)
        elif path.startswith("/delay/"):
            asyncio.get_running_loop().call_later(
                float(path.split("/")[2]), self._answer_later, stream_id
            )
        else:
            self._answer(stream_id)

    def _answer_later(self, stream_id: int) -> None:
        self._answer(stream_id)
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        request = self.requests.pop(stream_id)
        pseudo = {k: v for k, v in request["headers"] if k.startswith(":")}
        body = json.dumps(
            {
                "label": self.label,
                "method": pseudo.get(":method"),
                "path": pseudo.get(":path"),
                "authority": pseudo.get(":authority"),
                "headers": [[k, v] for k, v in request["headers"] if not k.startswith(":")],
                "body_bytes": request["size"],
                "protocol": "HTTP/2",
                "connections": _Server.connections,
            }
        ).encode()
        headers = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)


async def serve(port: int, label: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Server(label), "0.0.0.0", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] != "serve":
        raise SystemExit(f"unknown command {sys.argv[1]}")
    asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
