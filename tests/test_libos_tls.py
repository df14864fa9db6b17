"""TLS in the enclave fails as CPython's C ssl module does on a real socket.

The C module's read and write (SSL_read_ex/SSL_write_ex) report a socket error under them, a
reset or a broken pipe, as SSLEOFError "EOF occurred in violation of protocol" (so a ragged
read returns b"", and a write that meets the peer's reset after its alert is an SSLError, as
test_ssl's test_wrong_cert_tls13 wants); handshake and unwrap report the OSError itself.
Each case runs natively and in the enclave in the same test, and the outcomes must agree.
"""
from __future__ import annotations

import re
import select
import socket
import ssl
import struct
import threading

import pytest

from tests.libos_helpers import installed
from tests.test_libos_conformance import _self_signed, tls_contexts
from tests.test_libos_fidelity import transport  # noqa: F401


def after_reset(cert: str, op, *, ragged: bool = True):
    """``op(client)`` once the server has reset the established TLS connection."""
    server_ctx, client_ctx = tls_contexts(cert)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            tls = server_ctx.wrap_socket(conn, server_side=True)
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()                                    # linger 0: a reset, not a FIN
        t = threading.Thread(target=serve)
        t.start()
        with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                    server_hostname="localhost",
                                    suppress_ragged_eofs=ragged) as client:
            t.join(10)
            p = select.poll()                              # wait for the reset itself
            p.register(client, select.POLLIN)
            while not any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(10_000)):
                pass
            try:
                return "ok", op(client)
            except Exception as exc:                      # the outcome compared
                return type(exc), exc.args[0], re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc))


CASES = {
    "write": (lambda c: c.write(b"data"), True),
    "sendall": (lambda c: c.sendall(b"data" * 1000), True),
    "write_twice": (lambda c: (outcome_of(c.write, b"a"), c.write(b"b")), True),
    "read_ragged": (lambda c: c.read(1000), True),
    "recv_into_ragged": (lambda c: c.recv_into(bytearray(100)), True),
    "read_strict": (lambda c: c.read(1000), False),
    "unwrap": (lambda c: c.unwrap(), True),
}


def outcome_of(fn, *args):
    try:
        return fn(*args)
    except ssl.SSLError as exc:
        return type(exc), exc.args[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_peers_reset_surfaces_as_the_c_ssl_module_reports_it(transport, tmp_path, case):
    cert = _self_signed(tmp_path)
    op, ragged = CASES[case]
    native = after_reset(cert, op, ragged=ragged)
    with installed(transport):
        shimmed = after_reset(cert, op, ragged=ragged)
    assert shimmed == native
    if case == "write":
        assert native == (ssl.SSLEOFError, ssl.SSL_ERROR_EOF,
                          "EOF occurred in violation of protocol")
