"""The trusted transport: calls reach the host for real, results come back exact, and a host
that lies about lengths or results is caught (IagoError) before the app sees anything."""
import os

import pytest

from eleos_shim import abi
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU
from eleos_shim.errors import IagoError
from trusted.syscall import Bridge, Transport
from untrusted.host import Host


@pytest.fixture(params=["direct", "ocall"])
def transport(request):
    cfg = Config.from_env({}, mode="sgx", cost="account")
    cpu = ModeledCPU(cfg)
    host = Host(cfg.replace(syscalls="ocall"))
    a = host.bridge_addresses()
    t = Transport(request.param, Bridge(a["dispatch"], a["alloc"], a["free"], cpu.charge_fn,
                                        cpu.pollute_fn))
    yield t
    Host.lie_next("ret", 0, 0)


def test_read_and_write_go_through_for_real(transport, tmp_path):
    path = str(tmp_path / "f").encode() + b"\0"
    fd = transport.call(abi.OP_OPENAT, -100, os.O_RDWR | os.O_CREAT, 0o600, inbuf=path).ret
    assert fd >= 0
    assert transport.call(abi.OP_WRITE, fd, inbuf=b"hello world").ret == 11
    assert transport.call(abi.OP_PREAD, fd, 5, 6, outcap=5).out == b"world"
    big = os.urandom(300_000)   # larger than the initial staging buffer
    assert transport.call(abi.OP_PWRITE, fd, 0, 0, inbuf=big).ret == len(big)
    assert transport.call(abi.OP_PREAD, fd, len(big), 0, outcap=len(big)).out == big
    assert transport.call(abi.OP_CLOSE, fd).ret == 0
    assert transport.call(abi.OP_CLOSE, fd).ret == -9   # EBADF, as the kernel said


def test_errors_come_back_as_negative_errno(transport, tmp_path):
    r = transport.call(abi.OP_FSTATAT, -100, 0, inbuf=str(tmp_path / "nope").encode() + b"\0",
                       out2cap=128)
    assert r.ret == -2 and r.out2 == b""


def test_read_into_a_callers_buffer(transport):
    r, w = os.pipe()
    os.write(w, b"abcdef")
    buf = bytearray(6)
    rep = transport.call(abi.OP_READ, r, 6, outcap=6, into=buf)
    assert rep.ret == 6 and buf == b"abcdef" and rep.out == b""
    os.close(r), os.close(w)


def test_ocall_path_is_counted_exactly(transport):
    transport.reset_counts()
    fd = os.open(os.devnull, os.O_WRONLY)
    for _ in range(37):
        transport.call(abi.OP_WRITE, fd, inbuf=b"x")
    os.close(fd)
    c = transport.counts()["write"]
    assert c["count"] == 37 and c[transport.path] == 37


LIES = [
    ("read returns more bytes than asked", "ret_add", 10),
    ("a result below -4095 (not an errno)", "ret", -5000),
    ("out_len larger than the buffer", "out_len", 1 << 40),
    ("an error with data", "ret", -5),
]


@pytest.mark.parametrize("what,kind,value", LIES, ids=[x[0] for x in LIES])
def test_a_lying_host_is_caught(transport, what, kind, value):
    r, w = os.pipe()
    os.write(w, b"0123456789")
    Host.lie_next(kind, value, 1)
    with pytest.raises(IagoError):
        transport.call(abi.OP_READ, r, 4, outcap=4)
    # the next call, with an honest host, works
    assert transport.call(abi.OP_READ, r, 4, outcap=4).out in (b"0123", b"4567")
    os.close(r), os.close(w)


def test_write_that_claims_more_than_it_was_given_is_caught(transport):
    fd = os.open(os.devnull, os.O_WRONLY)
    Host.lie_next("ret", 100, 1)
    with pytest.raises(IagoError, match="took 100 bytes of 3"):
        transport.call(abi.OP_WRITE, fd, inbuf=b"abc")
    os.close(fd)


def test_recvfrom_out2_len_beyond_capacity_is_caught(transport):
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.send(b"ping")
    Host.lie_next("out2_len", 4096, 1)
    with pytest.raises(IagoError):
        transport.call(abi.OP_RECVFROM, b.fileno(), 16, 0, outcap=16, out2cap=64)
    a.close(), b.close()


def test_data_path_moves_bytes_and_is_counted(transport):
    import socket
    a, b = socket.socketpair()
    b.setblocking(False)
    transport.reset_counts()
    assert transport.data_out(abi.OP_SENDTO, a.fileno(), b"hello") == 5
    assert transport.data_out(abi.OP_SENDTO, a.fileno(), bytearray(b" world")) == 6
    assert transport.data_in(abi.OP_RECVFROM, b.fileno(), 64) == (11, b"hello world")
    assert transport.data_in(abi.OP_RECVFROM, b.fileno(), 64) == (-11, b"")    # EAGAIN
    r, w = os.pipe()
    assert transport.data_out(abi.OP_WRITE, w, b"pipe") == 4
    assert transport.data_in(abi.OP_READ, r, 64) == (4, b"pipe")
    c = transport.counts()
    assert c["sendto"][transport.path] == 2 and c["recvfrom"][transport.path] == 2
    assert c["write"][transport.path] == 1 and c["read"][transport.path] == 1
    a.close(), b.close(), os.close(r), os.close(w)


def test_data_path_refuses_other_ops(transport):
    with pytest.raises(IagoError, match="is not a write or a send"):
        transport.data_out(abi.OP_PWRITE, 1, b"x")
    with pytest.raises(IagoError, match="is not a read or a recv"):
        transport.data_in(abi.OP_PREAD, 0, 1)


FAST_LIES = [
    ("send", "send claims more than it was given", "ret", 100),
    ("send", "send with data written back", "out_len", 3),
    ("write", "write claims more than it was given", "ret", 100),
    ("recv", "recv returns more bytes than asked", "ret_add", 10),
    ("recv", "recv count differs from the bytes written", "out_len", 1),
    ("recv", "recv out_len beyond the buffer", "out_len", 1 << 40),
    ("recv", "a result below -4095 (not an errno)", "ret", -5000),
    ("recv", "an error with data", "ret", -5),
    ("recv", "an address nobody asked for", "out2_len", 16),
    ("read", "read count differs from the bytes written", "out_len", 2),
    ("read", "read returns more bytes than asked", "ret_add", 10),
]
_FAST = {"send": lambda t, a, b: t.data_out(abi.OP_SENDTO, a.fileno(), b"abc"),
         "write": lambda t, a, b: t.data_out(abi.OP_WRITE, a.fileno(), b"abc"),
         "recv": lambda t, a, b: t.data_in(abi.OP_RECVFROM, b.fileno(), 4),
         "read": lambda t, a, b: t.data_in(abi.OP_READ, b.fileno(), 4)}


@pytest.mark.parametrize("call,what,kind,value", FAST_LIES, ids=[x[1] for x in FAST_LIES])
def test_data_path_catches_a_lying_host(transport, call, what, kind, value):
    import socket
    a, b = socket.socketpair()
    a.sendall(b"0123456789")
    Host.lie_next(kind, value, 1)
    with pytest.raises(IagoError, match=f"host's reply to {call} of"):
        _FAST[call](transport, a, b)
    # the next call, with an honest host, works
    assert transport.data_in(abi.OP_READ, b.fileno(), 4)[1] in (b"0123", b"4567")
    a.close(), b.close()


def test_recvfrom_result_above_the_bytes_written_is_caught(transport):
    import socket
    a, b = socket.socketpair()
    a.sendall(b"0123456789")
    Host.lie_next("ret", 1 << 40, 1)
    with pytest.raises(IagoError, match="for recvfrom of 4 bytes"):
        transport.call(abi.OP_RECVFROM, b.fileno(), 4, 0, outcap=4)
    a.close(), b.close()


def test_recvfrom_msg_trunc_may_report_the_whole_datagram(transport):
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.send(b"0123456789")
    r = transport.call(abi.OP_RECVFROM, b.fileno(), 4, socket.MSG_TRUNC, outcap=4)
    assert (r.ret, r.out) == (10, b"0123")      # as the kernel says: the datagram's length
    a.close(), b.close()


def test_data_path_grows_its_staging_for_large_transfers(transport):
    import socket
    a, b = socket.socketpair()
    a.setblocking(False), b.setblocking(False)
    data = os.urandom(300_000)      # larger than the initial staging buffer
    sent = transport.data_out(abi.OP_SENDTO, a.fileno(), memoryview(data))
    assert 0 < sent <= len(data)
    got = b""
    while len(got) < sent:
        # asks for more than the staging buffer holds
        ret, chunk = transport.data_in(abi.OP_RECVFROM, b.fileno(), 1 << 20)
        assert ret == len(chunk) > 0
        got += chunk
    assert got == data[:sent]
    a.close(), b.close()
