"""Wire protocol of the face verification server: framed, AES-GCM sealed requests and replies.

App code, shared by the server (inside the enclave under the shim) and its clients.

As in Eleos's biometric server, a client never sends anything readable: a request is its
client id in the clear plus AES-GCM, under a key pre-shared with that client, of (identity,
probe).  The reply is sealed under the same key and bound to the request's nonce, so a host
that relays traffic can neither read a verdict nor replay an old one for a new request.

Framing: every message is a 4-byte big-endian length, then that many bytes.

Request body::

    client_id u32 BE | nonce 12 B | AES-GCM(key, nonce, plaintext, aad = b"FVQ1" + client_id)
    plaintext: kind u8 | 3 zero bytes | identity u32 LE | payload
      kind 1 (template): payload = the probe's template, uint16 LE counts
      kind 2 (image):    payload = height u16 LE | width u16 LE | height*width uint8 grey pixels;
                         the server computes the template itself

Reply body, first byte says which::

    0x00 | nonce 12 B | AES-GCM(key, nonce, status u8 | verdict u8 | distance f64 LE,
                                aad = b"FVR1" + request nonce)
    E    (E != 0: an error the server could not seal, because it could not tell which client
          sent the request or the frame was malformed: ERR_AUTH, ERR_FRAME, ERR_LENGTH)

Sealed statuses: OK (verdict 1 = accept, 0 = reject), UNKNOWN_IDENTITY, BAD_PAYLOAD.

Keys: each client's 128-bit AES key is HMAC-SHA256(master, "faceverify client" + id)[:16], so
the server holds one pre-shared master secret instead of a table of keys.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LEN = struct.Struct(">I")
REQ_HEAD = struct.Struct(">I12s")            # client id, nonce
PLAIN_HEAD = struct.Struct("<B3xI")          # kind, identity
IMAGE_HEAD = struct.Struct("<HH")            # height, width
REPLY_PLAIN = struct.Struct("<BBd")          # status, verdict, distance
NONCE_BYTES = 12
TAG_BYTES = 16

KIND_TEMPLATE = 1
KIND_IMAGE = 2

SEALED = 0x00
ERR_AUTH = 0x01      # unknown client, wrong key, tampered or truncated ciphertext
ERR_FRAME = 0x02     # the frame is too short to hold a request
ERR_LENGTH = 0x03    # the length prefix is 0 or above MAX_FRAME; the server then hangs up

OK = 0
UNKNOWN_IDENTITY = 1
BAD_PAYLOAD = 2      # wrong kind, or a probe of the wrong size/shape

# 1 MiB: a 512x512 grey image (the largest probe we accept) plus headers fits with room to spare.
MAX_FRAME = 1 << 20
MIN_REQUEST = REQ_HEAD.size + TAG_BYTES   # shorter cannot even hold a GCM tag

REQUEST_AAD = b"FVQ1"
REPLY_AAD = b"FVR1"

DEMO_MASTER_KEY = bytes.fromhex("6661636576657269667920646576206b")  # "faceverify dev k"


class ProtocolError(Exception):
    """A reply that does not parse or does not authenticate."""


class ServerError(Exception):
    """The server answered with an unsealed error code (``code`` is ERR_*)."""

    def __init__(self, code: int):
        super().__init__({ERR_AUTH: "authentication failed", ERR_FRAME: "malformed frame",
                          ERR_LENGTH: "bad length"}.get(code, f"error {code}"))
        self.code = code


def client_key(master: bytes, client_id: int) -> bytes:
    """The AES-128 key the server shares with ``client_id``."""
    msg = b"faceverify client" + client_id.to_bytes(4, "big")
    return hmac.new(master, msg, hashlib.sha256).digest()[:16]


def frame(body: bytes) -> bytes:
    return LEN.pack(len(body)) + body


def template_plaintext(identity: int, template: np.ndarray) -> bytes:
    t = np.ascontiguousarray(template, dtype="<u2")
    return PLAIN_HEAD.pack(KIND_TEMPLATE, identity) + t.tobytes()


def image_plaintext(identity: int, image: np.ndarray) -> bytes:
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim != 2:
        raise ValueError("an image probe must be 2-D grey")
    return PLAIN_HEAD.pack(KIND_IMAGE, identity) + IMAGE_HEAD.pack(*img.shape) + img.tobytes()


class ClientSession:
    """One client's keys and sealing: builds request frames and opens replies."""

    def __init__(self, client_id: int, master: bytes = DEMO_MASTER_KEY):
        self.client_id = client_id
        self._aead = AESGCM(client_key(master, client_id))
        self._aad = REQUEST_AAD + client_id.to_bytes(4, "big")

    def seal(self, plaintext: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
        """(request frame, its nonce).  Nonces are random: 96 bits, so no collision in any
        run we make; pass one only to build deliberately bad requests in tests."""
        nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        body = REQ_HEAD.pack(self.client_id, nonce) + self._aead.encrypt(nonce, plaintext, self._aad)
        return frame(body), nonce

    def template_request(self, identity: int, template: np.ndarray) -> tuple[bytes, bytes]:
        return self.seal(template_plaintext(identity, template))

    def image_request(self, identity: int, image: np.ndarray) -> tuple[bytes, bytes]:
        return self.seal(image_plaintext(identity, image))

    def open_reply(self, body: bytes, request_nonce: bytes) -> tuple[int, bool, float]:
        """(status, accepted, distance) of a reply body; ServerError for an unsealed error,
        ProtocolError if the reply was not sealed for this request."""
        if not body:
            raise ProtocolError("empty reply")
        if body[0] != SEALED:
            raise ServerError(body[0])
        nonce, sealed = body[1:1 + NONCE_BYTES], body[1 + NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, sealed, REPLY_AAD + request_nonce)
        except Exception as exc:  # InvalidTag or a ciphertext too short to hold a tag
            raise ProtocolError("reply does not authenticate for this request") from exc
        if len(plain) != REPLY_PLAIN.size:
            raise ProtocolError(f"reply plaintext is {len(plain)} bytes")
        status, verdict, distance = REPLY_PLAIN.unpack(plain)
        return status, bool(verdict), distance


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes, or ConnectionError if the peer closes first."""
    parts = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = LEN.unpack(recv_exact(sock, LEN.size))
    if n > MAX_FRAME:
        raise ProtocolError(f"reply frame of {n} bytes")
    return recv_exact(sock, n)


class Client:
    """A blocking client for tests and examples: one request, one reply."""

    def __init__(self, address: tuple[str, int], client_id: int = 1,
                 master: bytes = DEMO_MASTER_KEY, timeout: float = 30.0):
        self.session = ClientSession(client_id, master)
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, request: bytes, nonce: bytes) -> tuple[int, bool, float]:
        self.sock.sendall(request)
        return self.session.open_reply(recv_frame(self.sock), nonce)

    def verify_template(self, identity: int, template: np.ndarray) -> tuple[int, bool, float]:
        return self.call(*self.session.template_request(identity, template))

    def verify_image(self, identity: int, image: np.ndarray) -> tuple[int, bool, float]:
        return self.call(*self.session.image_request(identity, image))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
