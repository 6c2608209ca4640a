"""gRPC peers for the HTTP/2 tests: an unmodified grpcio server and client, with hand-written
generic handlers and raw-bytes messages (no generated code). They run with the project's
.venv python (grpcio is a dev dependency), as any uid.

    grpc_peers.py serve PORT LABEL
        Service detour.Lab, every message plain bytes:
          Echo (unary)           answers b"LABEL:" + request. A request "status=N" fails with
                                 status N; "delay=S" sleeps S seconds first; "flaky" fails
                                 with UNAVAILABLE half of the time (a seeded RNG).
          Stream (server stream) request b"N": answers N messages b"LABEL:i".
          Hold (server stream)   answers one message, then holds the call open until the
                                 client cancels it (counted in "active" meanwhile).
          Counts (unary)         JSON {"calls", "failures", "active", "cancelled"}.
        Prints "ready" once bound.
    grpc_peers.py call TARGET METHOD REQUEST [--count N] [--timeout S]
        N calls (1 by default) of a unary METHOD, one channel; one JSON line per call:
        {"code": "OK" | status name, "reply": text or null}.
    grpc_peers.py stream TARGET REQUEST [--timeout S]
        One Stream call; prints {"code", "replies": [...]}.
    grpc_peers.py cancel TARGET
        A Hold call: reads the first message, cancels, prints {"first": text, "code"}.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "detour.Lab"


def _identity(data: bytes) -> bytes:
    return data


class _Lab:
    def __init__(self, label: str) -> None:
        self.label = label.encode()
        self.lock = threading.Lock()
        self.calls = self.failures = self.active = self.cancelled = 0
        self.rng = random.Random(1337)

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.calls += 1
            flaky = request == b"flaky" and self.rng.random() < 0.5
            if flaky:
                self.failures += 1
        if flaky:
            context.abort(grpc.StatusCode.UNAVAILABLE, "flaky says no")
        if request.startswith(b"status="):
            code = int(request.split(b"=", 1)[1])
            status = next(s for s in grpc.StatusCode if s.value[0] == code)
            context.abort(status, f"asked for {status.name}")
        if request.startswith(b"delay="):
            time.sleep(float(request.split(b"=", 1)[1]))
        return self.label + b":" + request

    def stream(self, request: bytes, context: grpc.ServicerContext):
        with self.lock:
            self.calls += 1
        for index in range(int(request)):
            yield self.label + b":" + str(index).encode()

    def hold(self, request: bytes, context: grpc.ServicerContext):
        done = threading.Event()

        def cancelled() -> None:
            with self.lock:
                self.cancelled += 1
            done.set()

        with self.lock:
            self.calls += 1
            self.active += 1
        context.add_callback(cancelled)
        try:
            yield self.label + b":held"
            done.wait(60)
        finally:
            with self.lock:
                self.active -= 1

    def counts(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            return json.dumps(
                {
                    "calls": self.calls,
                    "failures": self.failures,
                    "active": self.active,
                    "cancelled": self.cancelled,
                }
            ).encode()


def serve(port: int, label: str) -> None:
    lab = _Lab(label)
    unary = grpc.unary_unary_rpc_method_handler
    streaming = grpc.unary_stream_rpc_method_handler
    raw = {"request_deserializer": _identity, "response_serializer": _identity}
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(lab.echo, **raw),
            "Stream": streaming(lab.stream, **raw),
            "Hold": streaming(lab.hold, **raw),
            "Counts": unary(lab.counts, **raw),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def _method(channel: grpc.Channel, name: str, streaming: bool = False):
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(f"/{SERVICE}/{name}", request_serializer=_identity, response_deserializer=_identity)


def call(target: str, method: str, request: bytes, count: int, timeout: float | None) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = _method(channel, method)
        for _ in range(count):
            try:
                reply = stub(request, timeout=timeout)
                line = {"code": "OK", "reply": reply.decode()}
            except grpc.RpcError as error:
                line = {"code": error.code().name, "reply": None, "details": error.details()}
            print(json.dumps(line), flush=True)


def stream(target: str, request: bytes, timeout: float | None) -> None:
    with grpc.insecure_channel(target) as channel:
        replies: list[str] = []
        try:
            for reply in _method(channel, "Stream", streaming=True)(request, timeout=timeout):
                replies.append(reply.decode())
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        print(json.dumps({"code": code, "replies": replies}), flush=True)


def cancel(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        call_ = _method(channel, "Hold", streaming=True)(b"", timeout=30)
        first = next(call_).decode()
        call_.cancel()
        try:
            next(call_)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        print(json.dumps({"first": first, "code": code}), flush=True)


def _option(argv: list[str], name: str, default: str | None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def main(argv: list[str]) -> None:
    timeout = _option(argv, "--timeout", None)
    seconds = float(timeout) if timeout is not None else None
    if argv[0] == "serve":
        serve(int(argv[1]), argv[2])
    elif argv[0] == "call":
        count = int(_option(argv, "--count", "1"))
        call(argv[1], argv[2], argv[3].encode(), count, seconds)
    elif argv[0] == "stream":
        stream(argv[1], argv[2].encode(), seconds)
    elif argv[0] == "cancel":
        cancel(argv[1])
    else:
        raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
