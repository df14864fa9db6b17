"""The face verification server: one event loop, templates in one mmap arena.

App code: under ``python -m eleos_shim`` all of it runs inside the enclave, unmodified.  It
never imports the shim; the shim reaches it through what it uses: its sockets and selector
become OCALLs (sgx) or exit-less RPCs (eleos), and its one ``mmap.mmap(-1, size)`` arena, the
template database, is placed in the EPC (sgx; paged by the modeled SGX driver beyond it) or in
SUVM (eleos).  This is the paper's biometric identity server: a database several
times larger than the EPC, touched at a random identity per request.

The arena is only ever read with slicing (``arena[a:b]`` -> bytes) and written with slice
assignment: under SUVM it is an object with the mmap API but no buffer protocol, as memory
behind Eleos's secure pointers is.  The index (identity -> offset) is an ordinary dict.

Run: ``python apps/faceverify/server.py -p 0 --db-mb 80`` (from the repo root) or
``python -m apps.faceverify.server ...``; the first stdout line is ``listening on HOST:PORT``.
"""
from __future__ import annotations

if __package__ in (None, ""):
    # Run as a script (or by the shim's loader as a path): make `apps` importable.
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import argparse
import mmap
import os
import selectors
import signal
import socket
import sys
import time

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from apps.faceverify import data, features, protocol as P

RECV_BYTES = 256 * 1024
# Select timeout: how quickly a SIGTERM is noticed when idle.  A blocked select under the
# shim may be a C call that Python signal handlers cannot interrupt, so the loop polls its flag.
IDLE_TICK_S = 0.2
# Per-client AES contexts are cached; the client id is attacker-chosen, so the cache is capped
# (past it, it starts over) rather than growing with every id someone sends.
MAX_CACHED_CLIENTS = 4096
# Connections served at once (memcached's -c default). With reading stopped while a reply is
# unsent and a frame capped at MAX_FRAME, one connection pins at most ~MAX_FRAME + RECV_BYTES
# of input plus the replies to one read; this cap makes that a bound for the whole server.
MAX_CONNECTIONS = 1024


class TemplateDB:
    """Fixed-size templates in one anonymous mmap arena, with an identity -> offset index."""

    def __init__(self, capacity: int, template_bytes: int):
        self.template_bytes = template_bytes
        self.capacity = capacity
        size = max(capacity * template_bytes, mmap.PAGESIZE)
        self.arena = mmap.mmap(-1, size)
        self.index: dict[int, int] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return len(self.arena)

    def add_many(self, first_identity: int, templates: np.ndarray) -> None:
        """Enroll consecutive identities, one slice assignment for the lot."""
        n = templates.shape[0]
        if self._next + n > self.capacity:
            raise MemoryError("template arena full")
        raw = np.ascontiguousarray(templates, dtype=features.TEMPLATE_DTYPE).tobytes()
        if len(raw) != n * self.template_bytes:
            raise ValueError("template size does not match the database's")
        off = self._next * self.template_bytes
        self.arena[off:off + len(raw)] = raw
        for k in range(n):
            self.index[first_identity + k] = off + k * self.template_bytes
        self._next += n

    def get(self, identity: int) -> np.ndarray | None:
        off = self.index.get(identity)
        if off is None:
            return None
        return np.frombuffer(self.arena[off:off + self.template_bytes], dtype=features.TEMPLATE_DTYPE)

    def close(self) -> None:
        self.arena.close()


def build_database(identities: int, size: int = data.FACE_SIZE, block: int = features.DEFAULT_BLOCK,
                   seed: int = data.DEFAULT_SEED) -> TemplateDB:
    """The 100 lfw_subset faces (ids 0..99), then synthetic identities up to ``identities``."""
    real = data.face_templates(size, block, seed)
    identities = max(identities, data.N_FACES)
    db = TemplateDB(identities, real.shape[1] * features.TEMPLATE_DTYPE.itemsize)
    db.add_many(0, real)
    chunk = 0
    while len(db) < identities:
        t = data.synthetic_templates(chunk, size, block, seed)[: identities - len(db)]
        db.add_many(data.N_FACES + chunk * data.SYNTH_CHUNK, t)
        chunk += 1
    return db


def identities_for_mb(db_mb: float, size: int = data.FACE_SIZE,
                      block: int = features.DEFAULT_BLOCK) -> int:
    tbytes = features.template_bins((size, size), block) * features.TEMPLATE_DTYPE.itemsize
    return max(data.N_FACES, int(db_mb * (1 << 20)) // tbytes)


class Verifier:
    """Opens sealed requests, checks them against the database, seals the replies."""

    def __init__(self, db: TemplateDB, block: int, threshold: float, master: bytes):
        self.db = db
        self.block = block
        self.threshold = threshold
        self.master = master
        self.bins = db.template_bytes // features.TEMPLATE_DTYPE.itemsize
        self._aeads: dict[int, AESGCM] = {}
        # Reply nonces: a random 32-bit prefix per server run + a 64-bit counter, never reused
        # under one key (the standard deterministic GCM nonce construction, NIST SP 800-38D).
        self._nonce_prefix = os.urandom(4)
        self._counter = 0
        self.served = 0
        self.errors = 0

    def _aead(self, client_id: int) -> AESGCM:
        aead = self._aeads.get(client_id)
        if aead is None:
            if len(self._aeads) >= MAX_CACHED_CLIENTS:
                self._aeads.clear()
            aead = AESGCM(P.client_key(self.master, client_id))
            self._aeads[client_id] = aead
        return aead

    def handle(self, body: bytes) -> bytes:
        """The reply body for one request body.  Never raises for bad input."""
        if len(body) < P.MIN_REQUEST:
            self.errors += 1
            return bytes((P.ERR_FRAME,))
        client_id, nonce = P.REQ_HEAD.unpack_from(body)
        aead = self._aead(client_id)
        try:
            # The AAD is the magic + the client id exactly as sent (bytes 0..3 of the body).
            plain = aead.decrypt(nonce, body[P.REQ_HEAD.size:], P.REQUEST_AAD + body[:4])
        except InvalidTag:
            self.errors += 1
            return bytes((P.ERR_AUTH,))
        status, verdict, distance = self._verify(plain)
        if status != P.OK:
            self.errors += 1
        self.served += 1
        self._counter += 1
        reply_nonce = self._nonce_prefix + self._counter.to_bytes(8, "big")
        sealed = aead.encrypt(reply_nonce, P.REPLY_PLAIN.pack(status, verdict, distance),
                              P.REPLY_AAD + nonce)
        return bytes((P.SEALED,)) + reply_nonce + sealed

    def _verify(self, plain: bytes) -> tuple[int, int, float]:
        if len(plain) < P.PLAIN_HEAD.size:
            return P.BAD_PAYLOAD, 0, 0.0
        kind, identity = P.PLAIN_HEAD.unpack_from(plain)
        if kind == P.KIND_TEMPLATE:
            if len(plain) != P.PLAIN_HEAD.size + self.bins * 2:
                return P.BAD_PAYLOAD, 0, 0.0
            probe = np.frombuffer(plain, dtype=features.TEMPLATE_DTYPE, offset=P.PLAIN_HEAD.size)
        elif kind == P.KIND_IMAGE:
            probe = self._image_probe(plain)
            if probe is None:
                return P.BAD_PAYLOAD, 0, 0.0
        else:
            return P.BAD_PAYLOAD, 0, 0.0
        template = self.db.get(identity)
        if template is None:
            return P.UNKNOWN_IDENTITY, 0, 0.0
        distance = features.chi_square(probe, template, self.block)
        return P.OK, int(distance <= self.threshold), distance

    def _image_probe(self, plain: bytes) -> np.ndarray | None:
        head = P.PLAIN_HEAD.size
        if len(plain) < head + P.IMAGE_HEAD.size:
            return None
        h, w = P.IMAGE_HEAD.unpack_from(plain, head)
        pixels = plain[head + P.IMAGE_HEAD.size:]
        if h * w != len(pixels) or features.template_bins((h, w), self.block) != self.bins:
            return None
        image = np.frombuffer(pixels, dtype=np.uint8).reshape(h, w)
        return features.extract(image, self.block)


class _Connection:
    __slots__ = ("sock", "inbuf", "outbuf", "hang_up", "events")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.hang_up = False      # close once outbuf is sent (after an unrecoverable framing error)
        self.events = selectors.EVENT_READ   # what the selector watches for now


class Server:
    """A single-threaded selectors event loop over non-blocking sockets.

    Requests on one connection are answered in order; a client may pipeline.  A bad length
    prefix gets ERR_LENGTH and the connection is closed (the stream cannot be re-synchronised);
    every other bad request gets an error reply and the connection stays usable.  A connection
    that closes mid-frame (a truncated request) is simply closed.
    """

    def __init__(self, verifier: Verifier, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS):
        self.verifier = verifier
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self.failures = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(512)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.connections = 0
        self._stop = False

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def stop(self) -> None:
        self._stop = True

    def serve_forever(self) -> None:
        try:
            while not self._stop:
                for key, events in self.selector.select(IDLE_TICK_S):
                    conn = key.data
                    try:
                        if conn is None:
                            self._accept()
                        elif conn.sock.fileno() < 0:
                            continue
                        elif events & selectors.EVENT_WRITE:
                            self._flush(conn)
                        elif events & selectors.EVENT_READ:
                            self._read(conn)
                    except Exception as e:      # noqa: BLE001 - one client's failure only
                        self._fail(conn, e)
        finally:
            self.close()

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def _fail(self, conn: _Connection | None, e: Exception) -> None:
        """A failure while serving one connection (a bug, MemoryError): say so on stderr and
        close that connection; everyone else keeps being served."""
        self.failures += 1
        print(f"faceverify: closing a connection after an internal error: {e!r}",
              file=sys.stderr, flush=True)
        if conn is not None and conn.sock.fileno() >= 0:
            self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:          # e.g. EMFILE, or the peer reset before accept
                return
            if self.open >= self.max_connections:
                # Beyond the cap a client is closed at once (memcached answers an error line
                # first; this protocol has no unsealed way to say "busy").
                self.refused += 1
                sock.close()
                continue
            self.open += 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.selector.register(sock, selectors.EVENT_READ, _Connection(sock))
            self.connections += 1

    def _drop(self, conn: _Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self.open -= 1

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:                # EOF, possibly mid-frame: nothing to answer
            self._drop(conn)
            return
        out = conn.outbuf
        if not conn.inbuf and not out and len(chunk) > P.LEN.size:
            # The common case in a closed loop: exactly one whole request arrived.  Answer it
            # straight from the received bytes, without the copies through the buffer.
            (n,) = P.LEN.unpack_from(chunk)
            if 0 < n <= P.MAX_FRAME and len(chunk) == P.LEN.size + n:
                reply = self.verifier.handle(chunk[P.LEN.size:])
                self._send_now(conn, P.LEN.pack(len(reply)) + reply)
                return
        buf = conn.inbuf
        buf += chunk
        pos = 0
        handle = self.verifier.handle
        while len(buf) - pos >= P.LEN.size:
            (n,) = P.LEN.unpack_from(buf, pos)
            if n == 0 or n > P.MAX_FRAME:
                out += P.frame(bytes((P.ERR_LENGTH,)))
                conn.hang_up = True
                pos = len(buf)
                break
            end = pos + P.LEN.size + n
            if len(buf) < end:
                break
            reply = handle(bytes(buf[pos + P.LEN.size:end]))
            out += P.LEN.pack(len(reply))
            out += reply
            pos = end
        del buf[:pos]
        if out:
            self._flush(conn)

    def _send_now(self, conn: _Connection, data: bytes) -> None:
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        if sent < len(data):
            conn.outbuf += data[sent:]
            self._watch(conn, selectors.EVENT_WRITE)

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.outbuf[:sent]
        if conn.outbuf:
            # Stop reading until the client drains its replies: back-pressure, bounded buffers.
            self._watch(conn, selectors.EVENT_WRITE)
        elif conn.hang_up:
            self._drop(conn)
        else:
            self._watch(conn, selectors.EVENT_READ)

    def _watch(self, conn: _Connection, events: int) -> None:
        # Only on a change: each modify is an epoll_ctl, i.e. one more exit under sgx.
        if conn.events != events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="faceverify-server", description=__doc__.split("\n")[0])
    ap.add_argument("-p", "--port", type=int, default=7711, help="TCP port; 0 = ephemeral")
    ap.add_argument("--host", default="127.0.0.1")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--db-mb", type=float, default=0.0,
                      help="database size in MiB (adds synthetic identities past the 100 faces)")
    size.add_argument("--identities", type=int, default=0, help="database size in identities")
    ap.add_argument("--block", type=int, default=features.DEFAULT_BLOCK, help="LBP block, px")
    ap.add_argument("--face-size", type=int, default=data.FACE_SIZE, help="face image side, px")
    ap.add_argument("--threshold", type=float, default=features.DEFAULT_THRESHOLD,
                    help="accept when the chi-square distance is at most this (the default is "
                         "calibrated for 16 px blocks on 128 px faces; recalibrate for others)")
    ap.add_argument("--master-key", default=P.DEMO_MASTER_KEY.hex(),
                    help="pre-shared master secret, hex (clients' keys derive from it)")
    ap.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    ap.add_argument("-c", "--max-connections", type=int, default=MAX_CONNECTIONS,
                    help="connections served at once; more are closed "
                         f"(default {MAX_CONNECTIONS})")
    args = ap.parse_args(argv)
    if args.max_connections < 1:
        ap.error("-c must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.identities:
        identities = args.identities
    else:
        identities = identities_for_mb(args.db_mb, args.face_size, args.block)
    t0 = time.perf_counter()
    db = build_database(identities, args.face_size, args.block, args.seed)
    build_s = time.perf_counter() - t0
    verifier = Verifier(db, args.block, args.threshold, bytes.fromhex(args.master_key))
    server = Server(verifier, args.host, args.port, args.max_connections)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    host, port = server.address
    print(f"listening on {host}:{port}", flush=True)
    print(f"faceverify: {len(db)} identities, {db.nbytes / (1 << 20):.1f} MiB arena, "
          f"{db.template_bytes} B per template, built in {build_s:.1f} s", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        db.close()
    print(f"faceverify: served {verifier.served} requests ({verifier.errors} errors) on "
          f"{server.connections} connections ({server.refused} refused, {server.failures} "
          f"closed after an internal error)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
