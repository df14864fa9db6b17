"""Edge cases an app may hit: argument errors, errno values and messages, odd open modes,
sockets in odd states.  Each line is a result or an exception (type, errno, message), with no
paths, fds or ports in it: the output must not change inside the enclave."""
import os
import select
import shutil
import signal
import socket
import tempfile
import threading
import warnings

warnings.simplefilter("ignore", ResourceWarning)   # some cases leak on purpose


def show(label, fn):
    try:
        r = fn()
    except Exception as e:   # noqa: BLE001 - the point is to print whatever is raised
        r = ("EXC", type(e).__name__, getattr(e, "errno", None), str(e))
    print(label, r)


top = tempfile.mkdtemp(prefix="libos-edges-")
os.chdir(top)
with open("a", "w") as f:
    f.write("hello")
os.symlink("a", "lnk")

# -- files and directories
show("listdir()", lambda: sorted(os.listdir()))
show("listdir(None)", lambda: sorted(os.listdir(None)))
show("scandir()", lambda: sorted(e.name for e in os.scandir()))
show("read -1", lambda: os.read(0, -1))
fd = os.open("a", os.O_RDONLY)


def open_fd():
    with open(fd) as f:
        return f.name == fd, f.mode, repr(f.buffer.raw).split(" ")[0], f.read()


show("open(fd)", open_fd)
show("fstat closed", lambda: os.fstat(fd))
show("stat fd+dir_fd", lambda: os.stat(3, dir_fd=4))
show("stat float", lambda: os.stat(3.5))
show("lstat/stat link", lambda: (os.lstat("lnk").st_mode, os.stat("lnk").st_mode))
with os.scandir(".") as it:
    show("scandir link", lambda: sorted((e.name, e.is_symlink(), e.is_file(),
                                         e.is_file(follow_symlinks=False),
                                         e.inode() == os.lstat(e.name).st_ino) for e in it))
show("bad errors handler", lambda: open("a", encoding="ascii", errors="bogus").read())
with open("b", "wb") as f:
    f.write(b"\xff\xfe")
show("decode error", lambda: open("b", encoding="utf-8").read())
show("illegal newline", lambda: open("a", newline="x"))
show("line buffering", lambda: open("c", "w", buffering=1).line_buffering)
with tempfile.NamedTemporaryFile(dir=".") as t:
    t.write(b"named")
    t.flush()
    show("named temp", lambda: open(t.name, "rb").read())


def truncate_fd():
    cfd = os.open("c", os.O_RDWR)
    os.truncate(cfd, 2)
    size = os.fstat(cfd).st_size
    os.close(cfd)
    return size


show("truncate fd", truncate_fd)
r, w = os.pipe()
show("pipe blocking", lambda: (os.get_blocking(r), os.set_blocking(r, False),
                               os.get_blocking(r)))
show("pipe EAGAIN", lambda: os.read(r, 1))
show("closerange", lambda: os.closerange(r, w + 1))
show("read closed fd", lambda: os.read(r, 1))
show("write closed fd", lambda: os.write(9999, b"x"))
show("fsync object", lambda: os.fsync(object()))
with open("big", "wb") as f:
    f.write(b"z" * 300000)


def os_sendfile_offset():
    i = os.open("big", os.O_RDONLY)
    o = os.open("out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        return os.sendfile(o, i, 100, 50), os.lseek(i, 0, os.SEEK_CUR)
    finally:
        os.close(i)
        os.close(o)


show("os.sendfile offset", os_sendfile_offset)

# -- sockets
a, b = socket.socketpair()
show("socket get_blocking", lambda: (os.get_blocking(a.fileno()), a.getblocking(),
                                     a.settimeout(2), os.get_blocking(a.fileno())))
show("setsockopt", lambda: (a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536),
                            a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 0,
                            len(a.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))))
show("getsockopt buflen", lambda: a.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE, 2000))
show("recv negative", lambda: a.recv(-1))
show("recv float", lambda: a.recv(1.5))
show("recv_into too small", lambda: a.recv_into(bytearray(2), 5))
b.sendall(b"line one\nline two\n")
with a.makefile("r") as f:
    show("makefile", lambda: (f.readline(), f.readline()))


def socket_sendfile():
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    got = []

    def reader():
        n = 0
        while n < 300000:
            data = s.recv(65536)
            if not data:
                break
            n += len(data)
        got.append(n)
    t = threading.Thread(target=reader)
    t.start()
    with open("big", "rb") as fh:
        sent = c.sendfile(fh)
    t.join()
    for x in (c, s, srv):
        x.close()
    return sent, got


show("socket.sendfile", socket_sendfile)
show("fromfd", lambda: (lambda s: (s.family.name, s.type.name, s.close()))(
    socket.fromfd(a.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)))
show("select nothing ready", lambda: select.select([a], [], [], 0.01))
show("poll timeout", lambda: select.poll().poll(1))
show("connect bad address", lambda: socket.socket().connect("nope"))
show("connect port range", lambda: socket.socket().connect(("127.0.0.1", 70000)))
show("unix path too long", lambda: socket.socket(socket.AF_UNIX).bind("x" * 200))
show("gethostbyname", lambda: socket.gethostbyname("localhost"))
show("getaddrinfo localhost", lambda: sorted({x[4][0] for x in socket.getaddrinfo(
    "localhost", "http", type=socket.SOCK_STREAM)}))
show("getaddrinfo bad service", lambda: socket.getaddrinfo("127.0.0.1", "no-such-service-x"))
show("getaddrinfo passive", lambda: socket.getaddrinfo(None, 0, socket.AF_INET,
                                                       socket.SOCK_STREAM, 0,
                                                       socket.AI_PASSIVE))
show("ipv6 bind", lambda: (lambda s: (s.bind(("::1", 0)), s.getsockname()[0], s.close()))(
    socket.socket(socket.AF_INET6)))


def accept_nonblocking():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.setblocking(False)
        return s.accept()


show("accept non-blocking", accept_nonblocking)
a.close()
b.close()
show("send on closed", lambda: a.send(b"x"))
show("fileno of closed", lambda: a.fileno())
show("repr of closed", lambda: repr(a))
s = socket.socket()
show("settimeout str", lambda: s.settimeout("x"))
show("settimeout negative", lambda: s.settimeout(-1))
show("settimeout nan", lambda: s.settimeout(float("nan")))
show("listen negative", lambda: (s.bind(("127.0.0.1", 0)), s.listen(-5)))
s.close()
show("sendto one argument", lambda: s.sendto(b"x"))
show("sendto bad address", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
    b"x", "str"))
show("bind 3-tuple", lambda: socket.socket().bind(("127.0.0.1", 0, 1)))
show("bind int host", lambda: socket.socket().bind((1, 0)))
show("bind unresolvable", lambda: socket.socket().bind(("no-such-host.invalid", 0)))
show("bind localhost", lambda: (lambda x: (x.bind(("localhost", 0)), x.getsockname()[0],
                                           x.close()))(socket.socket()))
show("ipv6 4-tuple", lambda: (lambda x: (x.bind(("::1", 0, 0, 0)), len(x.getsockname()),
                                         x.close()))(socket.socket(socket.AF_INET6)))
show("ipv6 flowinfo", lambda: socket.socket(socket.AF_INET6).bind(("::1", 0, 1 << 21)))
show("unix dgram unnamed", lambda: (lambda p: (p[0].getsockname(), p[0].close(),
                                               p[1].close()))(
    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)))
show("bad family", lambda: socket.socket(12345))
show("shutdown unconnected", lambda: socket.socket().shutdown(socket.SHUT_RDWR))
show("getpeername unconnected", lambda: socket.socket().getpeername())
show("select bad object", lambda: select.select([object()], [], [], 0))
show("select not a list", lambda: select.select(5, [], [], 0))
show("poll register -1", lambda: select.poll().register(-1))
show("epoll bad maxevents", lambda: select.epoll().poll(1, -3))
show("epoll register twice", lambda: (lambda e, p: (e.register(p[0]), e.register(p[0])))(
    select.epoll(), socket.socketpair()))
show("default timeout", lambda: (socket.socket().timeout, socket.setdefaulttimeout(3),
                                 socket.socket().timeout, socket.setdefaulttimeout(None)))
show("socket(fileno=-5)", lambda: socket.socket(fileno=-5))
show("socket(fileno=file)", lambda: socket.socket(fileno=os.open("/dev/null", os.O_RDONLY)))


def wakeup(fd, blocking, set_blocking):
    """signal.set_wakeup_fd refuses an fd the app made blocking (CPython's test_signal)."""
    set_blocking(blocking)
    try:
        return signal.set_wakeup_fd(fd) == -1 and "set"
    except ValueError as e:
        return f"ValueError: {str(e).replace(str(fd), 'FD')}"
    finally:
        signal.set_wakeup_fd(-1)


pr, pw = os.pipe()
print("wakeup fd, blocking pipe", wakeup(pw, True, lambda b: os.set_blocking(pw, b)))
print("wakeup fd, non-blocking pipe", wakeup(pw, False, lambda b: os.set_blocking(pw, b)))
os.close(pr), os.close(pw)
sa, sb = socket.socketpair()
print("wakeup fd, blocking socket", wakeup(sa.fileno(), True, sa.setblocking))
print("wakeup fd, non-blocking socket", wakeup(sa.fileno(), False, sa.setblocking))
sa.close(), sb.close()
os.chdir("/")
shutil.rmtree(top)
