"""A user-space delay line: bridges two interfaces frame by frame, like netem without netem.

    python delay_line.py IFACE_A IFACE_B --delay-ms 40 --loss 0.005 --seed 1

Every Ethernet frame that arrives on one interface leaves on the other
``--delay-ms`` later (so a round trip gains twice that); a share ``--loss`` of
frames in each direction is dropped. Run it in a namespace of its own that
holds both interfaces (see shaped_link.py). This kernel has no netem, so the
benchmark and the accuracy test emulate long links this way. Standard library
only; it runs until killed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import select
import socket
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
BUFFER_BYTES = 64 << 20


def open_interface(name: str) -> socket.socket:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
    raw.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER_BYTES)
    raw.bind((name, 0))
    raw.setblocking(False)
    return raw


def bridge(a: str, b: str, delay_s: float, loss: float, seed: int) -> None:
    side_a, side_b = open_interface(a), open_interface(b)
    waiting: dict[socket.socket, collections.deque[tuple[float, bytes]]] = {
        side_a: collections.deque(),
        side_b: collections.deque(),
    }
    other = {side_a: side_b, side_b: side_a}
    chance = random.Random(seed).random
    clock = time.monotonic
    sockets = [side_a, side_b]
    while True:
        now = clock()
        due: float | None = None
        for out, queue in waiting.items():
            while queue and queue[0][0] <= now:
                with contextlib.suppress(BlockingIOError):  # a full queue loses the frame
                    out.send(queue.popleft()[1])
            if queue and (due is None or queue[0][0] < due):
                due = queue[0][0]
        timeout = None if due is None else max(0.0, due - clock())
        readable, _, _ = select.select(sockets, [], [], timeout)
        for arrived_on in readable:
            queue = waiting[other[arrived_on]]
            while True:
                try:
                    frame, address = arrived_on.recvfrom(65535)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # our own send, seen again on the way out
                if loss and chance() < loss:
                    continue
                queue.append((clock() + delay_s, frame))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay")
    parser.add_argument("--loss", type=float, default=0.0, help="share of frames dropped, 0-1")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    bridge(args.a, args.b, args.delay_ms / 1000, args.loss, args.seed)


if __name__ == "__main__":
    main()
