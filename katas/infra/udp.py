"""UDP receivers of the lab's services: a receive buffer sized for bursts, and the kernel's count of
datagrams it dropped because that buffer was full.

UDP cannot push back: when a service does not read fast enough, the kernel drops datagrams silently
once the socket's receive buffer (about 200 KB by default) is full. A larger buffer absorbs bursts; the
drop count makes the rest visible instead of lost without a trace.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PROC_NET_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
"""Linux: set the buffer above net.core.rmem_max; needs CAP_NET_ADMIN (root), SO_RCVBUF is capped."""


def enlarge_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of `size` bytes, beyond the system's cap where allowed; the size granted.

    Linux reports twice the size asked for (it counts its bookkeeping), so the figure returned is halved.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped at net.core.rmem_max
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for this socket (receive buffer full), or None where not readable.

    Read from /proc/net/udp{,6}: the row whose inode is the socket's, last column `drops`.
    """
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in PROC_NET_UDP:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            if len(columns) >= 13 and columns[9] == inode:
                return int(columns[12])
    return None
