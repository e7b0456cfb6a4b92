"""The fault suite's TCP proxy does what the outage tests rely on (no services needed)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.faults.conftest import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(1024):
                    conn.sendall(data)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(1024)


def test_cut_resets_open_connections_refuses_new_ones_and_restore_serves_again(echo_port: int) -> None:
    proxy = TcpProxy(echo_port).start()
    try:
        before = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        assert roundtrip(before, b"hello") == b"hello"
        proxy.cut()
        assert proxy.dropped == 1
        try:
            answer = roundtrip(before, b"again")
        except OSError:  # reset by the proxy
            answer = b""
        assert answer == b"", "an open connection must not survive a cut"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as after:
            assert roundtrip(after, b"back") == b"back"
    finally:
        proxy.stop()


def test_a_held_connection_gets_no_answer_until_restored(echo_port: int) -> None:
    proxy = TcpProxy(echo_port).start()
    try:
        proxy.cut(hold=True)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as held:
            held.sendall(b"anyone?")
            with pytest.raises(TimeoutError):
                held.recv(1024)
            proxy.restore()
            held.settimeout(2)
            assert held.recv(1024) == b"anyone?"
    finally:
        proxy.stop()
