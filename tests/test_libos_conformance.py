"""In-process, one test per cause of a CPython regression test that failed under the shim
(issue 13): the app sees what it sees natively.  Each is the behaviour CPython's own test
pins, asserted here against the real transport (direct and ocall paths)."""
import array
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import warnings

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import LyingTransport, installed, make_transport
from tests.test_libos_fidelity import libos, outcome, same_as_native, transport  # noqa: F401


# -- MSG_DONTWAIT ---------------------------------------------------------------------------
def test_msg_dontwait_on_a_blocking_socket_raises_instead_of_blocking(libos):
    a, b = socket.socketpair()
    with a, b:
        assert a.getblocking()
        with pytest.raises(BlockingIOError):
            a.recv(10, socket.MSG_DONTWAIT)
        with pytest.raises(BlockingIOError):
            a.recv_into(bytearray(10), 10, socket.MSG_DONTWAIT)
        with pytest.raises(BlockingIOError):
            a.recvmsg(10, 0, socket.MSG_DONTWAIT)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with pytest.raises(BlockingIOError):
            while True:                       # fill the pipe: the next send would block
                b.sendmsg([b"x" * 65536], [], socket.MSG_DONTWAIT)
        assert a.recv(10) == b"x" * 10        # the socket itself is still blocking


# -- recvmsg / recvmsg_into / sendmsg, ancillary data ---------------------------------------
def test_recvmsg_into_scatters_and_reports_msg_trunc(libos):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.sendmsg([b"scatter ", memoryview(b"gather")])
        b1, b2 = bytearray(4), bytearray(20)
        n, anc, flags, addr = b.recvmsg_into([b1, memoryview(b2)])
        assert (n, anc, flags, bytes(b1), bytes(b2[:10])) == (14, [], 0, b"scat", b"ter gather")
        a.send(b"0123456789")
        data, anc, flags, addr = b.recvmsg(4)
        assert data == b"0123" and flags & socket.MSG_TRUNC


def test_scm_rights_fds_cross_and_enter_the_fd_table(libos):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        with a, b:
            socket.send_fds(a, [b"fds"], [r, w])
            msg, fds, flags, addr = socket.recv_fds(b, 10, 2)
            assert msg == b"fds" and len(fds) == 2
            assert all(fd in libos.kernel.fds for fd in fds)
            os.write(fds[1], b"through the passed fd")
            assert os.read(r, 100) == b"through the passed fd"
            for fd in fds:
                os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_scm_credentials_come_back_as_the_kernel_gives_them(libos):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        creds = struct.pack("=iII", os.getpid(), os.getuid(), os.getgid())
        a.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
        data, anc, flags, addr = b.recvmsg(1, socket.CMSG_SPACE(12))
        assert data == b"c" and anc == [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]


def _lie_in_control(fn, received):
    """A recvmsg reply whose control data ``fn`` rewrites (the fd really received is kept in
    ``received``, for the test to close)."""
    def lie(reply, args, kwargs):
        ctl = reply.out2[abi.MSG_NAME_MAX:]
        received.extend(array.array("i", ctl[16:20]))
        return reply._replace(out2=reply.out2[:abi.MSG_NAME_MAX] + fn(ctl))
    return lie


@pytest.mark.parametrize("rewrite", [
    lambda c: struct.pack("=Q", 4) + c[8:],                         # cmsg_len below its header
    lambda c: struct.pack("=Q", 4096) + c[8:],                      # beyond the buffer
    lambda c: c[:16] + struct.pack("=i", 2) + c[20:],               # stderr: already open
    lambda c: struct.pack("=Q", 16 + 3) + c[8:],                    # a 3-byte fd list
])
def test_a_lying_control_message_is_an_iago_error(rewrite):
    t = LyingTransport(make_transport("ocall"))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    received = []
    try:
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
        with installed(t):
            t.lie(abi.OP_RECVMSG, _lie_in_control(rewrite, received))
            s = socket.socket(fileno=os.dup(b.fileno()))
            with s, pytest.raises(IagoError):
                s.recvmsg(1, socket.CMSG_SPACE(4))
        assert t.told == 1
    finally:
        for fd in (r, w, *received):
            os.close(fd)
        a.close()
        b.close()


# -- fcntl and ioctl answer as the app's view -----------------------------------------------
def test_fcntl_getfl_shows_the_apps_blocking_view_not_the_hosts(libos):
    a, b = socket.socketpair()
    with a, b:
        assert not fcntl.fcntl(a, fcntl.F_GETFL) & os.O_NONBLOCK       # blocking
        a.settimeout(2.0)                     # as CPython: a timeout makes the fd O_NONBLOCK
        assert fcntl.fcntl(a, fcntl.F_GETFL) & os.O_NONBLOCK
        a.setblocking(True)
        assert not fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    r, w = os.pipe()
    try:
        fl = fcntl.fcntl(r, fcntl.F_GETFL)
        assert not fl & os.O_NONBLOCK
        fcntl.fcntl(r, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        assert not os.get_blocking(r)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)                     # non-blocking now, as the app asked
        fcntl.ioctl(r, termios.FIONBIO, struct.pack("i", 0))
        assert os.get_blocking(r)
        d = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 0)
        assert d in libos.kernel.fds and os.get_blocking(d)
        os.close(d)
        os.write(w, b"abc")
        assert struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\0" * 4))[0] == 3
    finally:
        os.close(r)
        os.close(w)


# -- select / poll / epoll ------------------------------------------------------------------
def test_select_sees_the_list_as_fileno_mutates_it(libos):
    a = []

    class F:
        def fileno(self):
            del a[-1]
            return 1
    a[:] = [F()] * 10
    assert select.select([], a, []) == ([], a[:5], [])


def test_poll_argument_checks_match_cpython(transport):
    def checks():
        p = select.poll()
        p.register(1)
        out = []
        for args in ((0, -1), (0, 1 << 64), (0, 0x10000)):
            out.append(outcome(lambda: p.register(*args)))
        for t in (1 << 64, (1 << 31), (1 << 32), float("nan"), "x"):
            out.append(outcome(lambda: p.poll(t)))
        out.append(outcome(lambda: type(p)()))
        return out, type(p).__name__, type(p).__module__
    assert [o[1] for o in same_as_native(transport, checks)[1][0][:3]] == [
        ValueError, OverflowError, OverflowError]


def test_epoll_flags_and_fromfd_match_cpython(libos):
    with pytest.raises(OSError):
        select.epoll(flags=12356)
    with pytest.raises(TypeError):
        select.epoll("foo")
    a, b = socket.socketpair()
    with a, b:
        ep = select.epoll()
        ep2 = select.epoll.fromfd(ep.fileno())
        ep2.register(a.fileno(), select.EPOLLOUT)
        assert ep.poll(1, 4) == [(a.fileno(), select.EPOLLOUT)]   # registered through ep2
        ep.close()
        with pytest.raises(OSError) as e:
            ep2.poll(0)
        assert e.value.errno == errno.EBADF
        ep2.close()                           # the fd is gone: nothing else is closed


# -- argument checks ------------------------------------------------------------------------
def test_socket_argument_checks_match_cpython(transport):
    def checks():
        out = []
        with socket.socket() as s, socket.socket(type=socket.SOCK_DGRAM) as d:
            out.append(outcome(lambda: s.shutdown(1 << 31)))
            out.append(outcome(lambda: s.listen(1 << 31)))
            for args in (("\u2620", ("127.0.0.1", 9)), (5j, 0, ("127.0.0.1", 9)),
                         (b"x", "bar", ("127.0.0.1", 9)), (b"x",), (b"x", 0, None, 4)):
                out.append(outcome(lambda: d.sendto(*args)))
        return out
    res = same_as_native(transport, checks)[1]
    assert res[0][1] is OverflowError and res[2][1] is TypeError


# -- files ----------------------------------------------------------------------------------
def test_append_mode_on_a_pipe_opens(libos):
    r, w = os.pipe()
    with open(w, "a") as f, open(r) as g:
        f.write("appended")
        f.flush()
        assert os.read(g.fileno(), 20) == b"appended"


def test_bytearray_paths_work_with_a_deprecation_warning(transport, tmp_path):
    p = tmp_path / "f"
    p.write_text("x")
    with installed(transport):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert os.stat(bytearray(bytes(p))).st_size == 1
            with pytest.raises(FileNotFoundError) as e:
                os.stat(bytearray(b"/nonexistent-eleos"))
        assert e.value.filename == bytearray(b"/nonexistent-eleos")
        assert any(issubclass(w.category, DeprecationWarning) for w in caught)


# -- metadata and name-space calls, routed --------------------------------------------------
def test_chmod_utime_access_links_cwd_and_dup2_match_native(transport, tmp_path):
    def run(tag):
        d = tmp_path / tag
        d.mkdir()
        p = str(d / "f")
        open(p, "w").close()
        out = []
        os.chmod(p, 0o600)
        out.append(oct(os.stat(p).st_mode & 0o777))
        os.utime(p, (1.5, 2.25))
        out.append((os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns))
        os.utime(p, ns=(10**9, 3 * 10**9))
        out.append(os.stat(p).st_mtime_ns)
        out.append((os.access(p, os.R_OK), os.access(p + "x", os.F_OK)))
        os.symlink(p, p + ".l")
        out.append((os.readlink(p + ".l") == p, type(os.readlink(os.fsencode(p + ".l")))))
        os.link(p, p + ".h")
        out.append(os.stat(p).st_nlink)
        here = os.getcwd()
        os.chdir(d)
        out.append((os.getcwd() == str(d), os.getcwdb() == bytes(d)))
        os.chdir(here)
        r, w = os.pipe()
        fd2 = os.dup2(w, 77)
        os.write(fd2, b"hi")
        out.append((fd2, os.read(r, 2)))
        for fd in (r, w, fd2):
            os.close(fd)
        for bad in (lambda: os.chmod(p + "zz", 0o600), lambda: os.symlink(p, p + ".l"),
                    lambda: os.utime(p, (1, 2), ns=(1, 2)), lambda: os.utime(p, [1, 2]),
                    lambda: os.readlink(p), lambda: os.link(p + "zz", p + "y")):
            try:
                bad()
            except Exception as e:   # noqa: BLE001 - comparing whatever is raised
                out.append((type(e), getattr(e, "errno", None),
                            os.path.basename(str(getattr(e, "filename", ""))),
                            os.path.basename(str(getattr(e, "filename2", "")))))
        return out
    native = run("native")
    with installed(transport):
        shimmed = run("shim")
        counts = transport.counts()
    assert shimmed == native
    for op in ("fchmodat", "utimensat", "faccessat", "symlinkat", "readlinkat", "linkat",
               "chdir", "getcwd", "dup3"):
        assert counts[op]["count"] >= 1, op


def test_a_getcwd_that_is_not_an_absolute_path_is_an_iago_error():
    t = LyingTransport(make_transport("ocall"))
    with installed(t):
        t.lie(abi.OP_GETCWD, lambda r, a, k: r._replace(ret=3, out=b"etc"))
        with pytest.raises(IagoError):
            os.getcwd()


def test_setblocking_on_an_fd_closed_elsewhere_fails_as_natively(libos):
    a = socket.socket()
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, a.fileno())
    a.close()
    with pytest.raises(OSError) as e:
        b.setblocking(False)
    assert e.value.errno == errno.EBADF
    b.detach()


def test_open_reads_as_ios_own_and_bytes_like_paths_list_as_bytes(libos, tmp_path):
    import io
    assert io.open.__module__ == "io" and open is io.open

    class Holder:
        opener = io.open                  # as test suites do: not turned into a method
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "g").write_text("held")
    assert Holder().opener(tmp_path / "held" / "g").read() == "held"
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "f").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert os.listdir(bytearray(bytes(listed))) == [b"f"]
        entries = list(os.scandir(memoryview(bytes(listed))))
    assert entries[0].name == b"f" and entries[0].path == bytes(listed / "f")


# -- TLS inside the enclave -----------------------------------------------------------------
def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "cert.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) +
                     cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def tls_contexts(cert: str):
    """(server, client) contexts: the server's key and certificate, the client trusting it."""
    import ssl
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    return server_ctx, client_ctx


class _Spy:
    """A transport that keeps every byte that crosses the boundary, both ways."""

    def __init__(self, inner):
        self.inner, self.path, self.seen = inner, inner.path, bytearray()

    def call(self, op, *args, **kwargs):
        for key in ("inbuf", "in2"):
            if kwargs.get(key) is not None:
                self.seen += bytes(kwargs[key])
        r = self.inner.call(op, *args, **kwargs)
        into = kwargs.get("into")
        if into is not None and r.ret > 0:
            self.seen += bytes(memoryview(into)[:r.ret])
        self.seen += r.out + r.out2
        return r

    def data_out(self, op, fd, data, flags=0):
        self.seen += bytes(data)
        return self.inner.data_out(op, fd, data, flags)

    def data_in(self, op, fd, n):
        ret, data = self.inner.data_in(op, fd, n)
        self.seen += data
        return ret, data

    def data_into(self, op, fd, n, dst):
        ret = self.inner.data_into(op, fd, n, dst)
        if ret > 0:
            self.seen += bytes(memoryview(dst)[:ret])
        return ret

    def poll(self, fds, events, ms):          # pollfd tables: no payload crosses
        return self.inner.poll(fds, events, ms)

    def epoll_wait(self, epfd, maxevents, ms):
        return self.inner.epoll_wait(epfd, maxevents, ms)


def test_tls_terminates_in_the_enclave_only_ciphertext_crosses(tmp_path):
    import ssl
    import threading
    cert = _self_signed(tmp_path)
    spy = _Spy(make_transport("ocall"))
    secret = b"plaintext that must never reach the host " * 4
    with installed(spy):
        server_ctx, client_ctx = tls_contexts(cert)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            got = []

            def serve():
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    got.append(tls.recv(4096))
                    tls.sendall(got[0].upper())
            t = threading.Thread(target=serve)
            t.start()
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert isinstance(tls, ssl.SSLSocket) and tls.version() == "TLSv1.3"
                tls.sendall(secret)
                reply = tls.recv(4096)
            t.join(10)
    assert got == [secret] and reply == secret.upper()
    assert len(spy.seen) > 2 * len(secret)             # the records did cross, routed
    assert secret[:16] not in spy.seen and secret.upper()[:16] not in spy.seen
