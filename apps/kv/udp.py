"""memcached's UDP transport (``-U port``), app code of apps/kvstore.py.

A mixin of the server (apps/kvstore.py's KVServer). As memcached 1.6.18 does it
(try_read_udp, build_udp_header and transmit_udp in memcached.c): every datagram starts with
an 8-byte frame header, request id, sequence number, datagram count and a reserved word, all
big endian; a request is one datagram (one whose count is not 1 is dropped) and may hold
several commands; each response (one per command, one per hit of a multi-get, END riding
with the last hit) is its own message of datagrams of at most 1,400 bytes, numbered 0..n-1
and carrying the request's id. Replies are sent as they are made; once the socket cannot take a
datagram at once, the rest of the request is dropped, as UDP may (memcached would wait), and
so is all of a request's reply past twice the largest item (memcached sends it all).
UDP is off unless ``-U`` names a port: a spoofed request makes the server send its reply to
someone else (memcached turned UDP off by default in 1.5.6 for that reason).
"""
from __future__ import annotations

import socket
import struct

UDP_HEADER = struct.Struct(">HHHH")
UDP_MAX_PAYLOAD_SIZE = 1400
UDP_DATA_SIZE = UDP_MAX_PAYLOAD_SIZE - UDP_HEADER.size
# Larger than any datagram (64 KiB): a request is never cut.
UDP_READ_SIZE = 65536


class UdpTransport:
    """The -U socket: each datagram is run through the text protocol as a short connection."""

    def _udp_open(self, host: str, port: int) -> None:
        self.usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.usock.bind((host, port))
        self.usock.setblocking(False)

    def _on_udp(self) -> None:
        for _ in range(64):         # a burst of datagrams, but others get their turn
            try:
                data, addr = self.usock.recvfrom(UDP_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue            # e.g. ICMP port unreachable of an earlier reply
            self.stats["bytes_read"] += len(data)
            if len(data) <= UDP_HEADER.size:
                continue
            rid, _seq, total, _ = UDP_HEADER.unpack_from(data)
            if total != 1:
                continue            # multi-datagram requests are not supported (dropped)
            self._udp_request(rid, data[UDP_HEADER.size:], addr)

    def _udp_request(self, rid: int, payload: bytes, addr) -> None:
        conn = self.udp_conn
        conn.rbuf[:] = payload
        conn.pending = None
        conn.swallow = 0
        conn.closing = False
        conn.more = None
        conn.obytes = 0
        budget = 2 * self.store.page_size
        while True:
            parked = self._process(conn)    # parked: more to parse or to stream after this
            size = sum(len(resp) for resp in conn.out)
            sent = size <= budget and all(self._udp_send(rid, resp, addr) for resp in conn.out)
            budget -= size
            conn.out.clear()
            conn.obytes = 0
            if not parked or not sent:
                # Done, or the reply passed two items' worth (-I) or the socket is full: the
                # rest of the request is not even made. UDP replies go wherever a request's
                # source address says, so one datagram naming a large value thousands of
                # times must not make the server send gigabytes (memcached has no bound).
                conn.more = None
                break
        # Input left over (a value still to come, half a line) waits for no next datagram.
        conn.rbuf.clear()
        conn.pending = None

    def _udp_send(self, rid: int, resp: bytes, addr) -> bool:
        """Send one response as its datagrams; False if the socket could not take them."""
        # An empty response (a multi-get's miss) is one datagram that says 0 datagrams.
        total = min(0xFFFF, -(-len(resp) // UDP_DATA_SIZE))
        for seq in range(max(total, 1)):
            chunk = resp[seq * UDP_DATA_SIZE:(seq + 1) * UDP_DATA_SIZE]
            try:
                n = self.usock.sendto(UDP_HEADER.pack(rid, seq, total, 0) + chunk, addr)
            except (BlockingIOError, InterruptedError):
                return False        # the socket is full: the rest of this reply is lost
            except OSError:
                return False
            self.stats["bytes_written"] += n
        return True
