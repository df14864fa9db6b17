"""Iago lies that used to reach the app (issue 11, part 3): each answer below is one the host
can give but the kernel never would, and each must stop the app with IagoError (or be
computed in the enclave, as a numeric host's getaddrinfo) instead of becoming a value the app
trusts.  The lies are told by a transport wrapper (tests/libos_helpers.py) over the real host,
and for the data path by the real C host (Host.lie_next)."""
import _socket
import errno
import os
import select
import socket
import struct

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import installed, make_transport
from tests.test_libos_hostile import liar  # noqa: F401  (the lying-host fixture)
from untrusted.host import Host

GAI_HEAD = struct.Struct("=iiiiI")


def records(*recs):
    """A getaddrinfo reply of these (family, type, proto, sockaddr bytes, canonname)."""
    out = b"".join(GAI_HEAD.pack(f, t, p, len(a), len(c)) + a + c for f, t, p, a, c in recs)
    return lambda r, a, k: r._replace(ret=len(recs), out2=out)


def sin(ip="127.0.0.1", port=80):
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + \
        socket.inet_aton(ip) + bytes(8)


def stat_lie(field, value):
    def lie(r, a, k):
        raw = r.out2 or r.out
        fields = list(struct.unpack(abi.STAT_FORMAT, raw))
        fields[abi.STAT_FIELDS.index(field)] = value
        forged = struct.pack(abi.STAT_FORMAT, *fields)
        return r._replace(out2=forged) if r.out2 else r._replace(out=forged)
    return lie


# -- getaddrinfo ------------------------------------------------------------------------------

@pytest.mark.parametrize("family, raw", [
    (socket.AF_UNIX, struct.pack("=H", socket.AF_UNIX) + b"/tmp/x\0"),
    (17, struct.pack("=H", 17) + bytes(18)),                               # AF_PACKET
    (socket.AF_INET6, struct.pack("=H", socket.AF_INET6) + bytes(26)),     # not asked for
], ids=["AF_UNIX", "AF_PACKET", "AF_INET6"])
def test_getaddrinfo_record_of_a_family_not_asked_for_is_caught(liar, family, raw):
    t, _ = liar
    t.lie(abi.OP_GETADDRINFO, records((family, socket.SOCK_STREAM, 6, raw, b"")))
    with pytest.raises(IagoError, match="family"):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)


def test_getaddrinfo_unix_record_for_an_unspecified_family_is_caught(liar):
    t, _ = liar
    t.lie(abi.OP_GETADDRINFO, records(
        (socket.AF_UNIX, 1, 0, struct.pack("=H", socket.AF_UNIX) + b"/x\0", b"")))
    with pytest.raises(IagoError, match="family"):
        socket.getaddrinfo("localhost", 80)


@pytest.mark.parametrize("typ, proto, words", [
    (socket.SOCK_DGRAM, 17, "socket type"),
    (socket.SOCK_STREAM, 17, "protocol"),
    (99, 0, "socket type"),
])
def test_getaddrinfo_record_of_a_type_or_protocol_not_asked_for_is_caught(liar, typ, proto,
                                                                         words):
    t, _ = liar
    t.lie(abi.OP_GETADDRINFO, records((socket.AF_INET, typ, proto, sin(), b"")))
    with pytest.raises(IagoError, match=words):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)


def test_getaddrinfo_canonname_nobody_asked_for_is_caught(liar):
    t, _ = liar
    t.lie(abi.OP_GETADDRINFO, records((socket.AF_INET, 1, 6, sin(), b"evil.example")))
    with pytest.raises(IagoError, match="canonical name"):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
    # asked for: only the first record may carry it
    t.lie(abi.OP_GETADDRINFO, records((socket.AF_INET, 1, 6, sin(), b"localhost"),
                                      (socket.AF_INET, 2, 17, sin(), b"evil.example")))
    with pytest.raises(IagoError, match="record 1"):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, 0, 0, socket.AI_CANONNAME)


NUMERIC = [("127.0.0.1", 80), ("::1", "8080"), ("10.1.2.3", None), ("2001:db8::7", 0),
           (b"192.0.2.1", b"443")]


@pytest.mark.parametrize("host, port", NUMERIC)
@pytest.mark.parametrize("family, type, proto, flags", [
    (0, 0, 0, 0), (0, socket.SOCK_STREAM, 0, 0), (0, 0, 17, 0),
    (0, socket.SOCK_DGRAM, 0, socket.AI_CANONNAME), (0, 0, 0, socket.AI_PASSIVE),
    (socket.AF_INET, 0, 0, socket.AI_NUMERICHOST), (socket.AF_INET6, 0, 6, 0),
])
def test_a_numeric_host_is_resolved_in_the_enclave_as_natively(host, port, family, type, proto,
                                                             flags):
    try:
        native = _socket.getaddrinfo(host, port, family, type, proto, flags)
    except socket.gaierror as e:
        native = e.errno
    t = make_transport("ocall")
    with installed(t):
        t.reset_counts()
        try:
            got = [(int(f), int(ty), p, c, a)
                   for f, ty, p, c, a in socket.getaddrinfo(host, port, family, type, proto,
                                                            flags)]
        except socket.gaierror as e:
            got = e.errno
        asked = "getaddrinfo" in t.counts()
    assert got == native
    # every answer is computed in the enclave; only glibc's errors (a literal of the other
    # family) come from the host, as they are its to give
    assert asked == isinstance(native, int)


def test_most_numeric_lookups_never_ask_the_host():
    t = make_transport("ocall")
    with installed(t):
        t.reset_counts()
        socket.getaddrinfo("127.0.0.1", 80)
        socket.getaddrinfo("::1", 443, socket.AF_INET6, socket.SOCK_STREAM)
        socket.create_server(("127.0.0.1", 0)).close()
        assert "getaddrinfo" not in t.counts()


def test_a_numeric_host_the_host_answers_with_another_address_is_caught(liar):
    t, _ = liar     # v4-mapped answers are glibc's: asked, and checked
    t.lie(abi.OP_GETADDRINFO, records(
        (socket.AF_INET6, 1, 6, struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 80, 0)
         + socket.inet_pton(socket.AF_INET6, "::ffff:6.6.6.6") + bytes(4), b"")))
    with pytest.raises(IagoError, match="numeric host '127.0.0.1'"):
        socket.getaddrinfo("127.0.0.1", 80, socket.AF_INET6, socket.SOCK_STREAM, 0,
                           socket.AI_V4MAPPED)


@pytest.mark.parametrize("code", [-7000, 3, -13])
def test_a_getaddrinfo_error_code_that_is_no_eai_value_is_caught(liar, code):
    t, _ = liar
    t.lie(abi.OP_GETADDRINFO, lambda r, a, k: r._replace(ret=0, out2=b"no",
                                                         args=r.args[:5] + (code,)))
    with pytest.raises(IagoError, match="error code"):
        socket.getaddrinfo("localhost", 80)


def test_a_real_eai_code_still_reaches_the_app_as_gaierror(liar):
    t, _ = liar
    t.lie(abi.OP_GETADDRINFO, lambda r, a, k: r._replace(
        ret=0, out2=b"Name or service not known", args=r.args[:5] + (socket.EAI_NONAME,)))
    with pytest.raises(socket.gaierror) as e:
        socket.getaddrinfo("localhost", 80)
    assert e.value.errno == socket.EAI_NONAME


# -- addresses --------------------------------------------------------------------------------

def test_accept_with_no_address_is_caught_and_the_connection_given_back(liar):
    t, libos = liar
    srv = socket.create_server(("127.0.0.1", 0))
    with srv, socket.create_connection(srv.getsockname()):
        t.lie(abi.OP_ACCEPT4, lambda r, a, k: r._replace(out=b""))
        with pytest.raises(IagoError, match="no address for accept"):
            srv.accept()
    assert libos.kernel.fds == {0, 1, 2}


def test_a_datagram_with_no_sender_is_caught_but_a_stream_has_none_as_natively(liar):
    t, _ = liar
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        u.sendto(b"d", u.getsockname())
        t.lie(abi.OP_RECVFROM, lambda r, a, k: r._replace(out2=b""))
        with pytest.raises(IagoError, match="no address for recvfrom"):
            u.recvfrom(10)
    a, b = socket.socketpair()
    with a, b:
        a.send(b"x")
        assert b.recvfrom(10) == (b"x", None)          # what Linux says for a stream


def test_getsockname_with_no_address_is_caught(liar):
    t, _ = liar
    with socket.socket() as s:
        t.lie(abi.OP_GETSOCKNAME, lambda r, a, k: r._replace(out=b""))
        with pytest.raises(IagoError, match="no address"):
            s.getsockname()


# -- stat -------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("blksize", 1 << 30), ("blksize", 1 << 40),
                                          ("uid", 1 << 32), ("gid", 1 << 40),
                                          ("blocks", 1 << 63)])
def test_stat_fields_no_kernel_gives_are_caught(liar, tmp_path, field, value):
    t, _ = liar
    (tmp_path / "f").write_text("x")
    t.lie(abi.OP_FSTATAT, stat_lie(field, value))
    with pytest.raises(IagoError):
        os.stat(tmp_path / "f")


def test_a_huge_blksize_never_sizes_the_apps_buffer(liar, tmp_path):
    t, _ = liar
    (tmp_path / "f").write_text("x")
    t.lie(abi.OP_FSTAT, stat_lie("blksize", 1 << 40))     # open() sizes its buffer from it
    with pytest.raises(IagoError, match="block size"):
        open(tmp_path / "f", "rb")


# -- epoll, directories -----------------------------------------------------------------------

def test_epoll_reporting_one_fd_twice_or_one_closed_since_is_caught(liar):
    t, _ = liar
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, d, select.epoll() as ep:
        ep.register(a.fileno(), select.EPOLLIN)
        ep.register(c.fileno(), select.EPOLLIN)
        b.send(b"x")
        twice = struct.pack("=IQ", select.EPOLLIN, a.fileno()) * 2
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(ret=2, out=twice))
        with pytest.raises(IagoError, match="twice"):
            ep.poll(1)
        gone = c.fileno()
        c.close()           # the kernel drops a closed fd from the epoll set
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=IQ", select.EPOLLIN, gone)))
        with pytest.raises(IagoError, match="not open"):
            ep.poll(1)
        assert ep.poll(1) == [(a.fileno(), select.EPOLLIN)]     # honest again


@pytest.mark.parametrize("how", ["listdir", "scandir"])
def test_a_directory_listing_a_name_twice_is_caught(liar, tmp_path, how):
    t, _ = liar
    (tmp_path / "f").write_text("x")
    rec = struct.pack("=QqHB", 7, 1, 24, 8) + b"f\0".ljust(5, b"\0")
    t.lie(abi.OP_GETDENTS, lambda r, a, k: r._replace(ret=48, out=rec + rec))
    with pytest.raises(IagoError, match="twice"):
        if how == "listdir":
            os.listdir(tmp_path)
        else:
            list(os.scandir(tmp_path))


# -- sockets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", [socket.AF_UNIX, 12345])
def test_socket_from_fileno_does_not_take_a_domain_the_socket_contradicts(liar, domain):
    t, _ = liar
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fd = s.detach()
    try:
        t.lie(abi.OP_GETSOCKOPT, lambda r, a, k: r._replace(out=struct.pack("=i", domain)))
        with pytest.raises(IagoError):
            socket.socket(fileno=fd)
        with socket.socket(fileno=fd) as again:              # the honest answer
            assert again.family == socket.AF_INET and again.type == socket.SOCK_STREAM
            fd = -1
    finally:
        if fd >= 0:
            os.close(fd)


@pytest.mark.parametrize("value", [-5, 5000])
def test_so_error_that_is_no_errno_is_caught(liar, value):
    t, _ = liar
    with socket.socket() as s:
        t.lie(abi.OP_GETSOCKOPT, lambda r, a, k: r._replace(out=struct.pack("=i", value)))
        with pytest.raises(IagoError, match="socket option 4"):
            s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


@pytest.mark.parametrize("how", ["sendall", "send", "send nonblocking", "os.write pipe"])
def test_a_send_of_data_answered_with_zero_bytes_is_caught_not_looped_on(liar, how):
    t, _ = liar
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        op = abi.OP_WRITE if how == "os.write pipe" else abi.OP_SENDTO
        t.lie(op, lambda rep, args, kw: rep._replace(ret=0))
        with pytest.raises(IagoError, match="took none"):
            if how == "sendall":
                a.sendall(b"payload")
            elif how == "send":
                a.send(b"payload")
            elif how == "send nonblocking":
                a.setblocking(False)
                a.send(b"payload")
            else:
                os.write(w, b"payload")
    finally:
        a.close(), b.close(), os.close(r), os.close(w)


def test_a_send_answered_with_zero_bytes_is_caught_on_the_c_data_path():
    with installed(make_transport("ocall")):
        a, b = socket.socketpair()
        try:
            Host.lie_next("ret", 0, 1)
            with pytest.raises(IagoError, match="host's reply to send of 3 bytes"):
                a.send(b"abc")
            assert a.send(b"abc") == 3 and b.recv(3) == b"abc"
        finally:
            Host.lie_next("ret", 0, 0)
            a.close(), b.close()
