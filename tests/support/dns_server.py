"""A DNS server that answers A queries for a few names, for a test network's namespace.

    python dns_server.py LISTEN_ADDRESS name=address [name=address ...]

Standard library only; it runs until killed. Unknown names get NXDOMAIN.
"""

from __future__ import annotations

import socket
import struct
import sys


def answer(query: bytes, names: dict[str, str]) -> bytes:
    ident, _flags, questions = struct.unpack("!HHH", query[:6])
    labels, offset = [], 12
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += length + 1
    question_end = offset + 5  # the zero label, type and class
    name = ".".join(labels).lower()
    qtype = struct.unpack("!H", query[offset + 1 : offset + 3])[0]
    address = names.get(name)
    found = address is not None and qtype == 1
    flags = 0x8180 if address is not None else 0x8183  # a response; NXDOMAIN if unknown
    header = struct.pack("!HHHHHH", ident, flags, min(questions, 1), int(found), 0, 0)
    body = query[12:question_end]
    if found and address is not None:
        body += struct.pack("!HHHLH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return header + body


def main() -> None:
    listen = sys.argv[1]
    names = dict(pair.split("=", 1) for pair in sys.argv[2:])
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((listen, 53))
    while True:
        query, peer = server.recvfrom(512)
        try:
            server.sendto(answer(query, names), peer)
        except (IndexError, struct.error):
            continue  # not a query we can read


if __name__ == "__main__":
    main()
