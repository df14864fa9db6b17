"""The unmodified face verification server gives identical answers under native, sgx and eleos.

Each mode runs ``python -m eleos_shim --mode M apps/faceverify/server.py`` (cost accounted,
not spent; EPC 8 MB as tests/conftest.py sets it) with a 16 MiB database, twice the EPC, so
that sgx pages the arena through the modeled driver and eleos serves it from SUVM.  The same
sealed requests must get the same status, verdict and distance (bit for bit: the arithmetic
is the same numpy code on the same bytes) as the verifier computes in this process, and the
shim's stats must show that the calls and the arena really went where the mode says.
"""
import numpy as np
import pytest

from apps.faceverify import data, features, protocol as P
from tests.faceverify_helpers import faceverify_server

DB_MB = "16"
N_IDENTITIES = 2221       # what --db-mb 16 gives with 7552-byte templates


def requests():
    """(description, plaintext, expected (status, verdict, distance) or None = ERR_AUTH)."""
    rng = np.random.default_rng(11)
    enrolled = data.face_templates()
    out = []
    for ident, genuine in [(0, True), (0, False), (33, True), (77, False), (99, True)]:
        img = data.probe_image(ident, genuine, rng)
        t = features.extract(img)
        d = features.chi_square(t, enrolled[ident])
        expected = (P.OK, d <= features.DEFAULT_THRESHOLD, d)
        out.append((f"face {ident} {genuine}", P.template_plaintext(ident, t), expected))
        if ident == 33:
            out.append(("image 33", P.image_plaintext(ident, img), expected))
    # Synthetic identities spread over the arena (pages far apart, beyond the EPC).
    for ident in (150, 1000, 1801, N_IDENTITIES - 1):
        chunk, row = divmod(ident - data.N_FACES, data.SYNTH_CHUNK)
        for genuine in (True, False):
            t = data.synthetic_probe(ident, genuine, rng)
            d = features.chi_square(t, data.synthetic_templates(chunk)[row])
            out.append((f"synthetic {ident} {genuine}", P.template_plaintext(ident, t),
                        (P.OK, d <= features.DEFAULT_THRESHOLD, d)))
    out.append(("unknown identity", P.template_plaintext(N_IDENTITIES, enrolled[0]),
                (P.UNKNOWN_IDENTITY, False, 0.0)))
    out.append(("bad payload", P.PLAIN_HEAD.pack(P.KIND_TEMPLATE, 3) + b"\0" * 10,
                (P.BAD_PAYLOAD, False, 0.0)))
    return out


REQUESTS = requests()


def ask_all(address):
    answers = []
    with P.Client(address, client_id=21, timeout=60) as c:
        for _, plaintext, _ in REQUESTS:
            answers.append(c.call(*c.session.seal(plaintext)))
        frame, _ = c.session.seal(REQUESTS[0][1])
        tampered = bytearray(frame)
        tampered[-1] ^= 0x80
        c.sock.sendall(bytes(tampered))
        answers.append(P.recv_frame(c.sock))
        answers.append(c.call(*c.session.seal(REQUESTS[0][1])))   # still serving
    return answers


def expected_answers():
    out = [tuple(e) for _, _, e in REQUESTS]
    return out + [bytes((P.ERR_AUTH,)), out[0]]


@pytest.mark.parametrize("mode", ["native", "sgx", "eleos"])
def test_same_verdicts_and_distances_under_every_mode(mode):
    with faceverify_server("--db-mb", DB_MB, mode=mode, start_timeout=90) as srv:
        answers = ask_all(srv.address)
        assert srv.stop() == 0, srv.stderr()
        stats = srv.stats()
    assert answers == expected_answers()
    assert stats is not None and stats["mode"] == mode
    calls = stats["calls"]
    if mode != "native":             # native runs the app as plain python: nothing routed
        recv = sum(v["count"] for k, v in calls.items() if k.startswith("recv"))
        assert recv >= len(REQUESTS)
    if mode == "sgx":
        for name in ("recvfrom", "sendto"):
            assert calls[name]["ocall"] == calls[name]["count"] > 0   # every one an exit
        assert stats["epc"]["faults"] > 0          # the 16 MiB arena pages through an 8 MB EPC
    if mode == "eleos":
        # Socket calls take the RPC path; whether a worker or the OCALL fallback served each
        # one is timing (an idle worker may be asleep), so only the path is pinned here.
        for name in ("recvfrom", "sendto"):
            assert calls[name]["rpc"] + calls[name]["fallback"] == calls[name]["count"] > 0
        assert stats["suvm"]["faults"] > 0         # SUVM misses: the arena exceeds its cache
        assert stats["epc"]["faults"] == 0         # ... and none of it went through SGX paging
