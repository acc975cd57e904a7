"""The UDP helpers against the real kernel: a datagram flood into a small buffer that nobody reads is
counted as dropped, and the buffer can be enlarged."""

from __future__ import annotations

import socket

from katas.infra.udp import enlarge_receive_buffer, kernel_drops


def test_a_full_receive_buffer_shows_as_kernel_drops() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        assert kernel_drops(receiver) == 0
        for _ in range(500):
            sender.sendto(b"x" * 512, receiver.getsockname())
        drops = kernel_drops(receiver)
        assert drops is not None
        assert drops > 0


def test_the_receive_buffer_grows_to_what_was_asked_where_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        default = receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        granted = enlarge_receive_buffer(receiver, 8 * 1024 * 1024)
        assert granted >= default
        if granted < 8 * 1024 * 1024:  # not root: capped at net.core.rmem_max
            with open("/proc/sys/net/core/rmem_max") as cap:
                assert granted == int(cap.read())
