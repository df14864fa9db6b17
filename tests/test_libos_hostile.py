"""The hostile host: replies that are impossible given what the enclave asked (an fd it already
holds, a ready fd it never polled, a directory record that overruns, a stat with no file type,
an address of the wrong size) are caught with IagoError before the app sees them."""
import os
import select
import socket
import struct

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import installed, lying_libos, make_transport
from untrusted.host import Host


@pytest.fixture
def liar():
    with lying_libos() as pair:
        yield pair


def ret(value):
    return lambda r, a, k: r._replace(ret=value)


def out(data):
    return lambda r, a, k: r._replace(out=data)


def out2(data):
    return lambda r, a, k: r._replace(out2=data)


def test_open_returning_an_fd_held_by_the_enclave_is_caught(liar, tmp_path):
    t, _ = liar
    (tmp_path / "f").write_text("x")
    with open(tmp_path / "f") as held:
        t.lie(abi.OP_OPENAT, ret(held.fileno()))
        with pytest.raises(IagoError, match="already has fd"):
            open(tmp_path / "f")
        t.lie(abi.OP_OPENAT, ret(1))                          # stdout
        with pytest.raises(IagoError):
            os.open(tmp_path / "f", os.O_RDONLY)


def test_socket_accept_and_dup_returning_held_fds_are_caught(liar):
    t, _ = liar
    with socket.socket() as held:
        t.lie(abi.OP_SOCKET, ret(held.fileno()))
        with pytest.raises(IagoError):
            socket.socket()
        t.lie(abi.OP_DUP, ret(held.fileno()))
        with pytest.raises(IagoError):
            held.dup()
        srv = socket.create_server(("127.0.0.1", 0))
        with srv, socket.create_connection(srv.getsockname()):
            t.lie(abi.OP_ACCEPT4, ret(srv.fileno()))
            with pytest.raises(IagoError):
                srv.accept()


def test_pipe_and_socketpair_returning_the_same_or_held_fds_are_caught(liar):
    t, _ = liar
    t.lie(abi.OP_PIPE2, out(struct.pack("=ii", 7, 7)))
    with pytest.raises(IagoError, match="same fd twice"):
        os.pipe()
    t.lie(abi.OP_SOCKETPAIR, out(struct.pack("=ii", 0, 2)))
    with pytest.raises(IagoError):
        socket.socketpair()
    t.lie(abi.OP_PIPE2, out(b"\0\0\0"))
    with pytest.raises(IagoError):
        os.pipe()


def test_poll_result_for_an_fd_never_asked_is_caught(liar):
    t, _ = liar
    a, b = socket.socketpair()
    with a, b:
        b.send(b"x")

        def swap_fd(r, args, kw):
            fd, ev, rev = struct.unpack("=ihh", r.out[:8])
            return r._replace(out=struct.pack("=ihh", fd + 100, ev, rev) + r.out[8:])
        t.lie(abi.OP_POLL, swap_fd)
        with pytest.raises(IagoError, match="rewrote"):
            select.select([a], [], [], 1)
        t.lie(abi.OP_POLL, lambda r, a_, k: r._replace(
            out=struct.pack("=ihh", a.fileno(), select.POLLIN, select.POLLOUT | select.POLLIN)))
        p = select.poll()
        p.register(a, select.POLLIN)
        with pytest.raises(IagoError, match="asked"):
            p.poll(100)
        t.lie(abi.OP_POLL, ret(2))                       # two ready out of one
        with pytest.raises(IagoError):
            p.poll(100)


def test_blocking_socket_wait_with_a_forged_poll_reply_is_caught(liar):
    t, _ = liar
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.05)     # nothing to read: recv waits through a poll, forged to name b
        t.lie(abi.OP_POLL, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=ihh", b.fileno(), select.POLLIN, select.POLLIN)))
        with pytest.raises(IagoError):
            a.recv(1)


def test_epoll_event_for_an_unregistered_fd_or_too_many_events_is_caught(liar):
    t, _ = liar
    a, b = socket.socketpair()
    with a, b, select.epoll() as ep:
        ep.register(a.fileno(), select.EPOLLIN)
        b.send(b"x")
        t.lie(abi.OP_EPOLL_WAIT, out(struct.pack("=IQ", select.EPOLLIN, b.fileno())))
        with pytest.raises(IagoError, match="never registered"):
            ep.poll(1)
        t.lie(abi.OP_EPOLL_WAIT, out(struct.pack("=IQ", select.EPOLLOUT, a.fileno())))
        with pytest.raises(IagoError, match="registered for"):
            ep.poll(1)
        two = struct.pack("=IQ", select.EPOLLIN, a.fileno()) * 2
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(ret=2, out=two))
        with pytest.raises(IagoError, match="maxevents"):
            ep.poll(1, maxevents=1)


def test_directory_records_that_overrun_or_are_unterminated_are_caught(liar, tmp_path):
    t, _ = liar
    (tmp_path / "f").write_text("x")

    def overrun(r, args, kw):
        ino, off, reclen, typ = struct.unpack_from("=QqHB", r.out)
        return r._replace(out=r.out[:16] + struct.pack("=H", reclen + 4096) + r.out[18:])
    t.lie(abi.OP_GETDENTS, overrun)
    with pytest.raises(IagoError, match="overruns"):
        os.listdir(tmp_path)
    record = struct.pack("=QqHB", 1, 1, 24, 8) + b"abcde"     # no NUL inside the record
    t.lie(abi.OP_GETDENTS, out(record))
    with pytest.raises(IagoError, match="unterminated"):
        os.listdir(tmp_path)
    slash = struct.pack("=QqHB", 1, 1, 24, 8) + b"a/b\0\0"
    t.lie(abi.OP_GETDENTS, out(slash))
    with pytest.raises(IagoError, match="'/'"):
        list(os.scandir(tmp_path))


def test_stat_with_an_impossible_mode_or_size_is_caught(liar, tmp_path):
    t, _ = liar
    p = tmp_path / "f"
    p.write_text("x")

    def bad_mode(r, args, kw):
        fields = list(struct.unpack(abi.STAT_FORMAT, r.out2))
        fields[abi.STAT_FIELDS.index("mode")] = 0o170644     # no such file type
        return r._replace(out2=struct.pack(abi.STAT_FORMAT, *fields))
    t.lie(abi.OP_FSTATAT, bad_mode)
    with pytest.raises(IagoError, match="impossible file mode"):
        os.stat(p)
    t.lie(abi.OP_FSTAT, out(b"\0" * 10))
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(IagoError, match="stat record"):
            os.fstat(fd)
    finally:
        os.close(fd)


def test_socket_addresses_of_the_wrong_length_or_family_are_caught(liar):
    t, _ = liar
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        t.lie(abi.OP_GETSOCKNAME, lambda r, a, k: r._replace(out=r.out[:10]))
        with pytest.raises(IagoError, match="sockaddr_in"):
            s.getsockname()
        t.lie(abi.OP_GETSOCKNAME, lambda r, a, k: r._replace(
            out=struct.pack("=H", socket.AF_INET6) + r.out[2:]))
        with pytest.raises(IagoError, match="family"):
            s.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        u.sendto(b"d", u.getsockname())
        t.lie(abi.OP_RECVFROM, lambda r, a, k: r._replace(out2=r.out2 + b"\0" * 40))
        with pytest.raises(IagoError):
            u.recvfrom(10)


def test_getaddrinfo_records_that_do_not_parse_are_caught(liar):
    t, _ = liar      # a name: a numeric host is resolved in the enclave, never asked
    t.lie(abi.OP_GETADDRINFO, lambda r, a, k: r._replace(out2=r.out2[:-3]))
    with pytest.raises(IagoError):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)

    def bad_addrlen(r, a, k):
        fam, typ, pro, alen, clen = struct.unpack_from("=iiiiI", r.out2)
        return r._replace(out2=struct.pack("=iiiiI", fam, typ, pro, 12, clen) + r.out2[20:])
    t.lie(abi.OP_GETADDRINFO, bad_addrlen)
    with pytest.raises(IagoError):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
    t.lie(abi.OP_GETADDRINFO, ret(5))          # more records than were sent
    with pytest.raises(IagoError):
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)


def test_a_read_the_c_host_inflates_is_caught_end_to_end(tmp_path):
    """The real C host lies (not a Python wrapper): the transport rejects it under the LibOS."""
    t = make_transport("ocall")
    (tmp_path / "f").write_bytes(b"0123456789")
    with installed(t):
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            Host.lie_next("ret_add", 10, 1)
            with pytest.raises(IagoError):
                os.read(fd, 4)
            assert os.read(fd, 4) == b"4567"       # honest again (the lie was consumed)
        finally:
            Host.lie_next("ret", 0, 0)
            os.close(fd)


def test_an_fd_closed_by_c_code_behind_the_shim_is_not_taken_for_a_lie(tmp_path):
    """os.dup'd fds that C code closes itself (numpy's np.load) may come back from the host."""
    t = make_transport("direct")
    (tmp_path / "f").write_text("x")
    with installed(t) as libos:
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        dup = os.dup(fd)
        libos.uninstall()
        os.close(dup)                         # closed behind the shim's back
        libos.install()
        again = os.open(tmp_path / "f", os.O_RDONLY)
        assert again == dup
        os.close(again)
        os.close(fd)


def test_epoll_create_returning_a_held_fd_is_caught(liar):
    t, _ = liar
    with socket.socket() as held:
        t.lie(abi.OP_EPOLL_CREATE, ret(held.fileno()))
        with pytest.raises(IagoError):
            select.epoll()


def test_accept_with_an_address_of_another_family_is_caught(liar):
    t, libos = liar
    srv = socket.create_server(("127.0.0.1", 0))
    with srv, socket.create_connection(srv.getsockname()):
        t.lie(abi.OP_ACCEPT4, lambda r, a, k: r._replace(
            out=struct.pack("=H", socket.AF_UNIX) + b"/tmp/x\0"))
        with pytest.raises(IagoError, match="family"):
            srv.accept()
    # the rejected connection is not kept: the enclave holds only stdio again
    assert libos.kernel.fds == {0, 1, 2}


@pytest.mark.parametrize("kind, value, call", [
    ("ret_add", 10, "recv"),          # more bytes than the app asked for
    ("out_len", 1, "recv"),           # a count that is not what was written
    ("ret", 100, "send"),             # more taken than the app gave
    ("ret_add", 10, "read"),
    ("ret", 100, "write"),
])
def test_data_path_under_the_app_rejects_a_lying_host(kind, value, call):
    # The real transport (its C checks), not the Python liar: what an app's socket or
    # os.read/os.write sees.
    with installed(make_transport("ocall")):
        a, b = socket.socketpair()
        r, w = os.pipe()
        try:
            a.sendall(b"0123456789")
            os.write(w, b"0123456789")
            Host.lie_next(kind, value, 1)
            do = {"send": lambda: a.send(b"abc"), "recv": lambda: b.recv(4),
                  "write": lambda: os.write(w, b"abc"), "read": lambda: os.read(r, 4)}[call]
            with pytest.raises(IagoError, match=f"host's reply to {call}"):
                do()
            assert b.recv(4) in (b"0123", b"4567")      # the next replies are honest
            assert os.read(r, 4) in (b"0123", b"4567")
        finally:
            a.close(), b.close(), os.close(r), os.close(w)
    Host.lie_next("ret", 0, 0)
