"""A blocking, socket-level WebSocket client, for use from worker threads.

Shutdown tests use it instead of the Autobahn client: in rare runs that
client, sharing the test reactor, answered a close frame a second late or
saw it only after the server's close-handshake timeout. This one reads the
socket directly, so what it reports is what the server put on the wire.
"""

import base64
import json
import os
import socket
from typing import Any

TIMEOUT = 10


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        assert response.startswith(b"HTTP/1.1 101"), response

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def frame(self) -> tuple[int, bytes]:
        head = self._read(2)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(8), "big")
        return head[0] & 0x0F, self._read(length)

    def send(self, payload: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, 0x80 | length])
        else:
            header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(message).encode())
        while True:
            opcode, payload = self.frame()
            if opcode == 1:
                reply = json.loads(payload)
                if reply.get("type") not in ("receive", "ping"):
                    return reply

    def close_code(self) -> int | None:
        """Read until the server's close frame; answer it; return its code."""
        while True:
            opcode, payload = self.frame()
            if opcode == 8:
                self.send(payload[:2], opcode=8)
                self.sock.close()
                return int.from_bytes(payload[:2], "big") if payload else None
