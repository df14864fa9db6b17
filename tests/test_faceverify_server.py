"""The face verification server, natively: verdicts, the sealed protocol, and bad input.

Every bad-input case is followed by a good request that must still be answered (on the same
connection when the protocol allows it, else on a new one).  One real server process on
127.0.0.1 serves the module; an in-process test runs the verifier over an arena that, like
SUVM memory, has slicing but no buffer protocol.
"""
import mmap
import socket
import struct

import numpy as np
import pytest

from apps.faceverify import data, features, protocol as P, server as S
from tests.faceverify_helpers import faceverify_server

IDENTITIES = 700     # the 100 faces and 600 synthetic identities (3 synthetic chunks)


@pytest.fixture(scope="module")
def srv():
    with faceverify_server("--identities", str(IDENTITIES)) as s:
        yield s
        assert s.stop() == 0


@pytest.fixture
def client(srv):
    with P.Client(srv.address, client_id=7, timeout=20) as c:
        yield c


def probe(identity, genuine, seed=0):
    return features.extract(data.probe_image(identity, genuine, np.random.default_rng(seed)))


def assert_good_request_answered(c):
    status, accepted, distance = c.verify_template(5, probe(5, True, seed=99))
    assert (status, accepted) == (P.OK, True)
    assert distance <= features.DEFAULT_THRESHOLD


def raw_call(sock, payload: bytes) -> bytes:
    sock.sendall(payload)
    return P.recv_frame(sock)


def test_genuine_probe_is_accepted_with_the_distance_the_client_would_compute(client):
    t = probe(12, True)
    status, accepted, distance = client.verify_template(12, t)
    assert status == P.OK and accepted
    assert distance == features.chi_square(t, data.face_templates()[12])


def test_impostor_probe_is_rejected(client):
    status, accepted, distance = client.verify_template(12, probe(12, False))
    assert status == P.OK and not accepted
    assert distance > features.DEFAULT_THRESHOLD


def test_synthetic_identity_verifies_against_its_template(client):
    rng = np.random.default_rng(1)
    ident = data.N_FACES + data.SYNTH_CHUNK + 3
    assert client.verify_template(ident, data.synthetic_probe(ident, True, rng))[:2] == (P.OK, True)
    assert client.verify_template(ident, data.synthetic_probe(ident, False, rng))[:2] == (P.OK, False)


def test_image_mode_gives_the_verdict_and_distance_of_template_mode(client):
    img = data.probe_image(40, True, np.random.default_rng(2))
    by_image = client.verify_image(40, img)
    by_template = client.verify_template(40, features.extract(img))
    assert by_image == by_template and by_image[:2] == (P.OK, True)


def test_pipelined_requests_are_answered_in_order(client):
    reqs = [client.session.template_request(i, probe(i, i % 2 == 0)) for i in (1, 2, 3, 4)]
    client.sock.sendall(b"".join(r for r, _ in reqs))
    verdicts = [client.session.open_reply(P.recv_frame(client.sock), n)[1] for _, n in reqs]
    assert verdicts == [False, True, False, True]


def test_unknown_identity_gets_a_sealed_error_and_the_connection_keeps_serving(client):
    status, accepted, _ = client.verify_template(IDENTITIES + 5, probe(1, True))
    assert status == P.UNKNOWN_IDENTITY and not accepted
    assert_good_request_answered(client)


def test_wrong_key_is_refused_and_the_connection_keeps_serving(srv):
    with P.Client(srv.address, client_id=7, master=b"not the server's master key") as c:
        with pytest.raises(P.ServerError) as err:
            c.verify_template(5, probe(5, True))
        assert err.value.code == P.ERR_AUTH
        c.session = P.ClientSession(7)             # now with the right key, same socket
        assert_good_request_answered(c)


def test_tampered_ciphertext_is_refused_and_the_connection_keeps_serving(client):
    frame, nonce = client.session.template_request(5, probe(5, True))
    bad = bytearray(frame)
    bad[-40] ^= 0x01
    assert raw_call(client.sock, bytes(bad)) == bytes((P.ERR_AUTH,))
    assert_good_request_answered(client)


def test_tampered_client_id_is_refused(client):
    frame, _ = client.session.template_request(5, probe(5, True))
    bad = bytearray(frame)
    bad[P.LEN.size + 3] ^= 0x01                     # the client id is in the clear, but bound
    assert raw_call(client.sock, bytes(bad)) == bytes((P.ERR_AUTH,))
    assert_good_request_answered(client)


def test_reply_cannot_be_passed_off_for_another_request(client):
    frame, nonce = client.session.template_request(5, probe(5, True))
    body = raw_call(client.sock, frame)
    with pytest.raises(P.ProtocolError):
        client.session.open_reply(body, bytes(12))
    assert client.session.open_reply(body, nonce)[0] == P.OK


def test_frame_too_short_for_a_request_is_refused(client):
    assert raw_call(client.sock, P.frame(b"\x00" * 10)) == bytes((P.ERR_FRAME,))
    assert_good_request_answered(client)


@pytest.mark.parametrize("plaintext", [
    P.PLAIN_HEAD.pack(P.KIND_TEMPLATE, 5) + b"\x00" * 100,                     # short template
    P.PLAIN_HEAD.pack(9, 5) + b"\x00" * 7552,                                  # unknown kind
    P.PLAIN_HEAD.pack(P.KIND_IMAGE, 5) + P.IMAGE_HEAD.pack(64, 64) + bytes(4096),  # wrong shape
    P.PLAIN_HEAD.pack(P.KIND_IMAGE, 5) + P.IMAGE_HEAD.pack(128, 128) + bytes(100),  # short image
    b"\x01\x00",                                                               # no header
], ids=["short-template", "unknown-kind", "image-wrong-shape", "image-truncated", "no-header"])
def test_bad_payload_gets_a_sealed_error_and_the_connection_keeps_serving(client, plaintext):
    frame, nonce = client.session.seal(plaintext)
    status, accepted, _ = client.session.open_reply(raw_call(client.sock, frame), nonce)
    assert status == P.BAD_PAYLOAD and not accepted
    assert_good_request_answered(client)


@pytest.mark.parametrize("length", [0, P.MAX_FRAME + 1, 0xFFFFFFFF])
def test_bad_length_is_refused_the_connection_closed_and_the_server_keeps_serving(srv, length):
    with socket.create_connection(srv.address, timeout=20) as s:
        s.sendall(struct.pack(">I", length) + b"x" * 64)
        assert P.recv_frame(s) == bytes((P.ERR_LENGTH,))
        assert s.recv(1) == b""                    # the server hung up
    with P.Client(srv.address) as c:
        assert_good_request_answered(c)


def test_truncated_request_closes_the_connection_and_the_server_keeps_serving(srv):
    frame, _ = P.ClientSession(3).template_request(5, probe(5, True))
    with socket.create_connection(srv.address, timeout=20) as s:
        s.sendall(frame[: len(frame) // 2])
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""
    with P.Client(srv.address) as c:
        assert_good_request_answered(c)


def test_many_clients_at_once_are_all_answered(srv):
    clients = [P.Client(srv.address, client_id=100 + k) for k in range(20)]
    try:
        reqs = [c.session.template_request(k, probe(k, True)) for k, c in enumerate(clients)]
        for c, (frame, _) in zip(clients, reqs):
            c.sock.sendall(frame)
        for c, (_, nonce) in zip(clients, reqs):
            assert c.session.open_reply(P.recv_frame(c.sock), nonce)[:2] == (P.OK, True)
    finally:
        for c in clients:
            c.close()


class SlicingOnlyArena:
    """What SUVM hands the app for mmap.mmap(-1, n): the mmap API, no buffer protocol."""

    def __init__(self, fileno, length, *args, **kwargs):
        assert fileno == -1
        self._mem = bytearray(length)
        self.slices_read = 0

    def __len__(self):
        return len(self._mem)

    def __getitem__(self, key):
        self.slices_read += 1
        return bytes(self._mem[key])

    def __setitem__(self, key, value):
        self._mem[key] = value

    def close(self):
        self._mem = bytearray()


def test_verifier_works_on_an_arena_without_the_buffer_protocol(monkeypatch):
    plain = S.build_database(300)
    monkeypatch.setattr(mmap, "mmap", SlicingOnlyArena)
    db = S.build_database(300)
    assert isinstance(db.arena, SlicingOnlyArena)
    with pytest.raises(TypeError):
        memoryview(db.arena)
    sessions = P.ClientSession(4)
    ref = S.Verifier(plain, 16, features.DEFAULT_THRESHOLD, P.DEMO_MASTER_KEY)
    ver = S.Verifier(db, 16, features.DEFAULT_THRESHOLD, P.DEMO_MASTER_KEY)
    rng = np.random.default_rng(8)
    for ident in (0, 99, 150, 299):
        t = (features.extract(data.probe_image(ident, True, rng)) if ident < data.N_FACES
             else data.synthetic_probe(ident, True, rng))
        frame, nonce = sessions.template_request(ident, t)
        got = sessions.open_reply(ver.handle(frame[4:]), nonce)
        assert got == sessions.open_reply(ref.handle(frame[4:]), nonce)
        assert got[:2] == (P.OK, True)
    assert db.arena.slices_read == 4
    plain.close()
    db.close()


class _FailsOnIdentity(S.Verifier):
    """A verifier with a bug that one request can reach: identity 666 raises."""

    def _verify(self, plain):
        if len(plain) >= P.PLAIN_HEAD.size and P.PLAIN_HEAD.unpack_from(plain)[1] == 666:
            raise RuntimeError("injected fault")
        return super()._verify(plain)


def test_an_exception_serving_one_connection_closes_it_and_the_server_keeps_serving():
    """An in-process server (real sockets) whose handler raises for one client's request:
    that connection is closed, the next client is served."""
    import threading
    db = S.build_database(data.N_FACES)
    server = S.Server(_FailsOnIdentity(db, 16, features.DEFAULT_THRESHOLD, P.DEMO_MASTER_KEY))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with P.Client(server.address, timeout=10) as bad:
            bad.sock.sendall(bad.session.template_request(666, probe(5, True))[0])
            assert bad.sock.recv(1) == b""          # closed, nothing answered
        with P.Client(server.address, timeout=10) as good:
            assert_good_request_answered(good)
        assert server.failures == 1
    finally:
        server.stop()
        t.join(timeout=10)
        db.close()
    assert not t.is_alive()


def test_connections_beyond_the_cap_are_closed_and_those_within_are_served():
    """-c bounds what all clients together can make the server buffer (each connection pins
    at most one frame of MAX_FRAME bytes): a client beyond it is closed at once."""
    with faceverify_server("--identities", "100", "-c", "3") as s:
        held = [P.Client(s.address, timeout=20) for _ in range(3)]
        try:
            for c in held:
                assert_good_request_answered(c)
            with socket.create_connection(s.address, timeout=20) as extra:
                # A partial 1 MiB frame it would otherwise have to hold.
                try:
                    extra.sendall(struct.pack(">I", P.MAX_FRAME) + b"x" * 4096)
                except OSError:
                    pass                             # reset: it was closed already
                try:
                    assert extra.recv(1) == b""
                except ConnectionResetError:
                    pass
            held.pop().close()
            # A reply on another connection: the server has run the select round that saw
            # the close (the close reached it first).
            assert_good_request_answered(held[0])
            with P.Client(s.address, timeout=20) as again:       # a freed place is reused
                assert_good_request_answered(again)
        finally:
            for c in held:
                c.close()

