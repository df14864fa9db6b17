"""In-process: with the LibOS installed on a real transport (direct and ocall paths), the app
sees what it sees natively: the same values, the same exceptions with the same errno and
filename, the same blocking/timeout behaviour; and uninstall restores everything."""
import asyncio
import builtins
import errno
import io
import mmap
import os
import pathlib
import select
import selectors
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from eleos_shim import abi
from tests.libos_helpers import installed, make_transport


@pytest.fixture(params=["direct", "ocall"])
def transport(request):
    return make_transport(request.param)


@pytest.fixture
def libos(transport):
    with installed(transport) as lib:
        yield lib


def outcome(fn):
    """What the app observes of ``fn()``: its value, or its exception's type/errno/filenames."""
    try:
        return ("ok", fn())
    except Exception as e:   # noqa: BLE001 - comparing whatever is raised
        return ("raise", type(e), getattr(e, "errno", None), getattr(e, "filename", None),
                getattr(e, "filename2", None), str(e))


def same_as_native(transport, fn):
    native = outcome(fn)
    with installed(transport):
        shimmed = outcome(fn)
    assert shimmed == native
    return native


# -- files: errno and filename fidelity ---------------------------------------------------------
def test_missing_file_raises_filenotfound_with_the_filename_as_given(transport, tmp_path):
    for name in (str(tmp_path / "nope"), bytes(tmp_path / "nope"), tmp_path / "nope"):
        res = same_as_native(transport, lambda: open(name))
        assert res[1] is FileNotFoundError and res[3] == os.fspath(name)   # open() fspaths
        same_as_native(transport, lambda: os.stat(name))
        same_as_native(transport, lambda: os.open(name, os.O_RDONLY))
        same_as_native(transport, lambda: os.unlink(name))


def test_directory_errors_match_native(transport, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    d, f = str(tmp_path / "d"), str(tmp_path / "d" / "f")
    assert same_as_native(transport, lambda: open(d))[1] is IsADirectoryError
    assert same_as_native(transport, lambda: open(d, "w"))[1] is IsADirectoryError
    assert same_as_native(transport, lambda: os.listdir(f))[1] is NotADirectoryError
    assert same_as_native(transport, lambda: os.mkdir(d))[1] is FileExistsError
    assert same_as_native(transport, lambda: os.rmdir(d))[2] == errno.ENOTEMPTY
    res = same_as_native(transport, lambda: os.rename(d + "x", d + "y"))
    assert res[3] == d + "x" and res[4] == d + "y"


def test_open_argument_errors_match_native(transport, tmp_path):
    p = str(tmp_path / "f")
    cases = [(p, "rU"), (p, "rw"), (p, "rbt"), (p, "q"), (p, "rr"), (p, "t"), (p, "+"),
             (p, 5), (3.5, "r"), (-1, "r"), (p + "\0", "r")]
    for args in cases:
        res = same_as_native(transport, lambda: open(*args))
        assert res[0] == "raise"
    for kw in ({"encoding": "utf-8"}, {"errors": "strict"}, {"newline": ""}):
        assert same_as_native(transport, lambda: open(p, "wb", **kw))[1] is ValueError
    assert same_as_native(transport, lambda: open(p, "r", closefd=False))[1] is ValueError
    assert same_as_native(transport, lambda: open(p, "w", buffering=0))[1] is ValueError


def test_stat_is_field_for_field_the_native_stat(libos, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"12345")
    os.symlink(p, tmp_path / "link")
    # (the link itself is left out: following it changes its atime between the two reads)
    link_shimmed = os.lstat(tmp_path / "link")
    shimmed = [os.stat(p), os.stat(tmp_path / "link"), os.stat(str(tmp_path)),
               os.stat(bytes(p))]
    libos.uninstall()
    link_native = os.lstat(tmp_path / "link")
    assert (link_shimmed.st_mode, link_shimmed.st_ino, link_shimmed.st_size) == \
        (link_native.st_mode, link_native.st_ino, link_native.st_size)
    native = [os.stat(p), os.stat(tmp_path / "link"), os.stat(str(tmp_path)), os.stat(bytes(p))]
    for a, b in zip(shimmed, native):
        assert a == b
        for field in ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns",
                      "st_ctime_ns", "st_blksize", "st_blocks", "st_rdev"):
            assert getattr(a, field) == getattr(b, field), field


def test_text_binary_append_exclusive_and_iteration(libos, tmp_path):
    p = tmp_path / "t.txt"
    with open(p, "w", newline="\r\n") as f:
        f.write("a\nb\n")
    assert open(p, "rb").read() == b"a\r\nb\r\n"
    with open(p) as f:
        assert list(f) == ["a\n", "b\n"]
        assert f.fileno() >= 0 and not f.isatty()
    with open(p, "a") as f:
        f.write("c\n")
    with open(p, "rb", buffering=0) as raw:
        assert raw.read(3) == b"a\r\n" and raw.readall() == b"b\r\nc\n"
    with pytest.raises(FileExistsError):
        open(p, "x")
    with open(p, "r+") as f:
        f.seek(0, io.SEEK_END)
        assert f.tell() == 8
    with open(os.open(p, os.O_RDONLY), "rb", closefd=True) as f:
        assert f.read(1) == b"a"
    assert pathlib.Path(p).read_text() == "a\nb\nc\n"          # universal newlines
    opened = []
    with open(p, "rb", opener=lambda path, flags: opened.append(path) or os.open(path, flags)) as f:
        assert f.read(1) == b"a"
    assert opened == [str(p)]


def test_unclosed_file_warns_like_native(libos, tmp_path):
    p = tmp_path / "f"
    p.write_text("x")
    f = open(p)
    with pytest.warns(ResourceWarning, match="unclosed file"):
        del f
        import gc
        gc.collect()


def test_directory_functions_and_fd_based_rmtree(libos, tmp_path):
    top = tmp_path / "top"
    os.makedirs(top / "a" / "b")
    (top / "a" / "f").write_text("1")
    (top / "g").write_text("2")
    assert sorted(os.listdir(top)) == ["a", "g"]
    assert sorted(os.listdir(bytes(top))) == [b"a", b"g"]
    fd = os.open(top, os.O_RDONLY)
    assert sorted(os.listdir(fd)) == ["a", "g"]
    with os.scandir(fd) as it:
        entries = {e.name: (e.is_dir(), e.is_file(), e.stat().st_ino == e.inode()) for e in it}
    assert entries == {"a": (True, False, True), "g": (False, True, True)}
    with os.scandir(top) as it:
        assert all(isinstance(e, os.DirEntry) for e in it)
    assert os.stat("g", dir_fd=fd).st_size == 1
    os.close(fd)
    assert shutil._use_fd_functions
    shutil.rmtree(top)
    assert not os.path.exists(top)


def test_sendfile_copy_and_truncate(libos, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(200_000))
    shutil.copyfile(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    os.truncate(tmp_path / "dst", 10)
    assert os.stat(tmp_path / "dst").st_size == 10
    fd = os.open(tmp_path / "dst", os.O_RDWR)
    os.ftruncate(fd, 3)
    assert os.fstat(fd).st_size == 3
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)


# -- sockets: errno, blocking and timeouts --------------------------------------------------------
def test_socket_errors_match_native(transport):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]

    def refused():
        with socket.socket() as c:
            c.connect(("127.0.0.1", port))

    def in_use():
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert same_as_native(transport, refused)[2] == errno.ECONNREFUSED
    assert same_as_native(transport, in_use)[2] == errno.EADDRINUSE
    probe.close()
    assert same_as_native(transport, lambda: socket.getaddrinfo("no-such-host.invalid", 80))[1] \
        is socket.gaierror
    assert same_as_native(transport, lambda: socket.getaddrinfo("", 80))[1] is socket.gaierror
    res = same_as_native(transport, lambda: socket.getaddrinfo("127.0.0.1", 80, socket.AF_INET,
                                                                socket.SOCK_STREAM))
    assert res[1][0][4] == ("127.0.0.1", 80)


def test_nonblocking_recv_raises_blockingioerror_and_timeout_raises_timeouterror(libos):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        with pytest.raises(BlockingIOError) as e:
            a.recv(1)
        assert e.value.errno == errno.EAGAIN
        a.settimeout(0.02)
        with pytest.raises(TimeoutError) as t:
            a.recv(1)
        assert t.value.args == ("timed out",)
        srv = socket.create_server(("127.0.0.1", 0))
        srv.settimeout(0.02)
        with srv, pytest.raises(TimeoutError):
            srv.accept()


def test_blocking_recv_waits_for_data_sent_by_another_thread(libos):
    a, b = socket.socketpair()
    ready = threading.Event()

    def sender():
        ready.wait()
        b.sendall(b"late")
    t = threading.Thread(target=sender)
    t.start()
    ready.set()
    assert a.recv(4) == b"late"          # blocks in the host (OCALL poll), then reads
    t.join()
    # os.read on the fd of a blocking socket blocks too, as natively
    t = threading.Thread(target=lambda: b.send(b"raw"))
    t.start()
    assert os.read(a.fileno(), 3) == b"raw"
    t.join()
    a.close()
    b.close()


def test_unix_sockets_and_abstract_addresses(libos, tmp_path):
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen()
        assert srv.getsockname() == path
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
            s, addr = srv.accept()
            with s:
                assert addr == "" and c.getpeername() == path
                c.sendall(b"unix")
                assert s.recv(4) == b"unix"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
        d.bind(b"\0eleos-libos-test-%d" % os.getpid())
        assert d.getsockname() == b"\0eleos-libos-test-%d" % os.getpid()


def test_socket_class_identity_and_repr(libos):
    with socket.socket() as s:
        assert isinstance(s, socket.SocketType) and type(s).__name__ == "socket"
        assert repr(s).startswith("<socket.socket fd=")
        assert s.family == socket.AF_INET and s.type == socket.SOCK_STREAM
    assert repr(s) == "<socket.socket [closed] fd=-1, family=2, type=1, proto=0>"


def test_asyncio_echo_works_inside(libos):
    async def main():
        async def handle(reader, writer):
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"async\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line
    assert asyncio.run(main()) == b"ASYNC\n"


def test_four_threads_writing_at_once_are_all_counted(libos, transport):
    transport.reset_counts()
    fds = [os.open(os.devnull, os.O_WRONLY) for _ in range(4)]

    def writer(fd):
        for _ in range(250):
            os.write(fd, b"x")
    threads = [threading.Thread(target=writer, args=(fd,)) for fd in fds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fd in fds:
        os.close(fd)
    assert transport.counts()["write"]["count"] == 1000


# -- what is and is not routed ---------------------------------------------------------------------
def test_imports_are_not_routed(libos, transport, tmp_path, monkeypatch):
    (tmp_path / "libos_fresh_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    transport.reset_counts()
    import libos_fresh_module
    assert libos_fresh_module.VALUE == 42
    assert transport.counts() == {}
    sys.modules.pop("libos_fresh_module")


def test_fork_and_preexec_fn_are_refused_clearly(libos):
    for call in (os.fork, os.forkpty,
                 lambda: subprocess.run(["true"], preexec_fn=lambda: None)):
        with pytest.raises(OSError, match="cannot fork") as e:
            call()
        assert e.value.errno == errno.ENOSYS


def test_anonymous_mmap_goes_to_the_heap_factory_and_files_still_map(transport, tmp_path):
    made = []

    class Heap(bytearray):
        pass

    def factory(length, **kwargs):
        made.append((length, kwargs))
        return Heap(length)
    p = tmp_path / "f"
    p.write_bytes(b"mapped file")
    with installed(transport, heap_factory=factory):
        m = mmap.mmap(-1, 8192, access=mmap.ACCESS_WRITE)
        assert isinstance(m, Heap) and isinstance(m, mmap.mmap) and len(m) == 8192
        with open(p, "r+b") as f, mmap.mmap(f.fileno(), 0) as fm:
            assert fm[:6] == b"mapped" and isinstance(fm, mmap.mmap)
    assert made == [(8192, {"access": mmap.ACCESS_WRITE})]
    with installed(transport):
        with mmap.mmap(-1, 4096) as plain:
            assert type(plain).__name__ == "mmap" and len(plain) == 4096


def test_uninstall_restores_every_patched_name(transport):
    names = [(builtins, "open"), (io, "open"), (os, "open"), (os, "read"), (os, "stat"),
             (os, "scandir"), (os, "fork"), (socket, "socket"), (socket, "getaddrinfo"),
             (select, "select"), (select, "poll"), (select, "epoll"), (mmap, "mmap"),
             (selectors.PollSelector, "_selector_cls"), (subprocess, "_fork_exec")]
    before = [getattr(o, n) for o, n in names]
    dir_fd, fd_set = set(os.supports_dir_fd), set(os.supports_fd)
    with installed(transport) as lib:
        assert all(getattr(o, n) is not b for (o, n), b in zip(names, before))
        assert os.open in os.supports_dir_fd and os.scandir in os.supports_fd
        lib.install()                       # idempotent
    assert [getattr(o, n) for o, n in names] == before
    assert os.supports_dir_fd == dir_fd and os.supports_fd == fd_set


def test_os_write_is_one_write_call_each(libos, transport):
    fd = os.open(os.devnull, os.O_WRONLY)
    transport.reset_counts()
    for _ in range(25):
        assert os.write(fd, b"ab") == 2
    os.close(fd)
    counts = transport.counts()
    assert counts["write"]["count"] == 25 and counts["write"][transport.path] == 25
    assert set(counts) == {"write", "close"}
    assert abi.OP_WRITE == abi.OP["WRITE"]


def test_a_leaked_socket_warns_and_its_fd_is_closed_through_the_shim(libos, transport):
    import gc
    s = socket.socket()
    fd = s.fileno()
    transport.reset_counts()
    with pytest.warns(ResourceWarning, match="unclosed <socket.socket"):
        del s
        gc.collect()
    assert transport.counts()["close"]["count"] == 1
    assert fd not in libos.kernel.fds
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF


def test_blocking_pipes_block_and_complete_writes_like_native(libos):
    r, w = os.pipe()
    assert os.get_blocking(r) and os.get_blocking(w)
    big = os.urandom(1 << 20)            # far more than a pipe holds: the write must wait
    got = []
    reader = threading.Thread(target=lambda: got.append(b"".join(
        iter(lambda: os.read(r, 65536), b""))))
    reader.start()
    assert os.write(w, big) == len(big)   # natively a blocking pipe write is complete
    os.close(w)
    reader.join()
    assert got == [big]
    os.close(r)
    r, w = os.pipe()
    os.set_blocking(r, False)
    assert not os.get_blocking(r) and os.get_blocking(w)
    with pytest.raises(BlockingIOError):
        os.read(r, 1)                     # empty, write end open, non-blocking
    os.set_blocking(r, True)
    with open(r, "rb") as fr, open(w, "wb", buffering=0) as fw:
        t = threading.Thread(target=lambda: fw.write(b"through FileIO"))
        t.start()
        assert fr.read(14) == b"through FileIO"   # blocks until the writer thread writes
        t.join()


def test_blocking_stream_send_returns_only_when_all_is_queued(libos):
    a, b = socket.socketpair()
    data = os.urandom(4 << 20)
    got = bytearray()

    def drain():
        while len(got) < len(data):
            got.extend(b.recv(1 << 16))
    t = threading.Thread(target=drain)
    t.start()
    assert a.send(data) == len(data)
    t.join()
    assert got == data
    a.close()
    b.close()


def test_blocking_unix_connect_to_a_full_backlog_waits_for_accept(libos, tmp_path):
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen(0)
        first = socket.socket(socket.AF_UNIX)
        first.connect(path)                 # fills the backlog of 0
        second = socket.socket(socket.AF_UNIX)
        second.settimeout(5)
        with pytest.raises(BlockingIOError):
            second.connect(path)            # as natively: with a timeout, EAGAIN at once
        second.close()
        third = socket.socket(socket.AF_UNIX)
        done = threading.Event()

        def connect():
            third.connect(path)             # blocking: waits until the server accepts
            done.set()
        t = threading.Thread(target=connect)
        t.start()
        conn1, _ = srv.accept()
        conn2, _ = srv.accept()
        t.join()
        assert done.is_set()
        for s in (first, third, conn1, conn2):
            s.close()


def test_selectors_imported_only_at_install_are_routed_and_restored_after():
    """In a fresh interpreter (selectors not yet imported): its classes bind select.* at
    import, which the install itself triggers; they must still be the routed ones, and the
    real ones again after uninstall."""
    code = (
        "import sys\n"
        "assert 'selectors' not in sys.modules\n"
        "from tests.libos_helpers import installed, make_transport\n"
        "with installed(make_transport('direct')) as lib:\n"
        "    import selectors\n"
        "    print(selectors.PollSelector._selector_cls == lib.poll,\n"
        "          selectors.EpollSelector._selector_cls is lib.epoll_class)\n"
        "import select\n"
        "print(selectors.PollSelector._selector_cls is select.poll,\n"
        "      selectors.EpollSelector._selector_cls is select.epoll,\n"
        "      selectors.SelectSelector._select is select.select)\n")
    root = pathlib.Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "True True\nTrue True True\n"


def test_an_app_started_without_stdin_gets_fd_0_from_its_first_open():
    code = (
        "import os\n"
        "from tests.libos_helpers import installed, make_transport\n"
        "t = make_transport('ocall')\n"
        "os.close(0)\n"
        "with installed(t):\n"
        "    fd = os.open(os.devnull, os.O_RDONLY)\n"
        "    print(fd)\n"
        "    os.close(fd)\n")
    root = pathlib.Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "0\n"


def test_sendmsg_gathers_and_recvmsg_returns_data_and_flags(libos):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        assert a.sendmsg([b"scatter ", memoryview(b"gather")]) == 14
        data, anc, flags, addr = b.recvmsg(64)
        assert (data, anc, flags) == (b"scatter gather", [], 0)
