"""A TCP server thread and a client in the same process, on 127.0.0.1 (IPv4, and IPv6 when
the host has it): makefile, sendall of 1 MB, shutdown, timeouts, non-blocking, errno cases."""
import errno
import socket
import threading


def echo_server(srv):
    conn, _ = srv.accept()
    with conn:
        f = conn.makefile("rwb")
        for line in f:
            if line == b"big\n":
                conn.sendall(b"x" * 1_000_000)
                continue
            f.write(line.upper())
            f.flush()
        f.close()


for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        continue
    try:
        srv = socket.create_server((host, 0), family=family)
    except OSError:
        print("no ipv6")
        continue
    port = srv.getsockname()[1]
    t = threading.Thread(target=echo_server, args=(srv,))
    t.start()
    with socket.create_connection((host, port), timeout=10) as c:
        print(family.name, "peer is server", c.getpeername()[1] == port, c.gettimeout())
        c.sendall(b"hello\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += c.recv(100)
        print("echo", buf)
        c.sendall(b"big\n")
        got = 0
        while got < 1_000_000:
            chunk = c.recv(65536)
            got += len(chunk)
        print("big", got)
        c.shutdown(socket.SHUT_WR)
        print("eof", c.recv(10))
    t.join()
    srv.close()

# errno fidelity
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
free_port = probe.getsockname()[1]
probe.close()
c = socket.socket()
try:
    c.connect(("127.0.0.1", free_port))
except ConnectionRefusedError as e:
    print("refused", e.errno == errno.ECONNREFUSED)
print("connect_ex", c.connect_ex(("127.0.0.1", free_port)) == errno.ECONNREFUSED)
c.close()
a = socket.socket()
a.bind(("127.0.0.1", 0))
a.listen()
b = socket.socket()
try:
    b.bind(a.getsockname())
except OSError as e:
    print("in use", e.errno == errno.EADDRINUSE, type(e).__name__)
b.close()
c = socket.create_connection(a.getsockname())
s, _ = a.accept()
s.setblocking(False)
try:
    s.recv(10)
except BlockingIOError as e:
    print("nonblocking", e.errno == errno.EAGAIN, s.getblocking(), s.gettimeout())
s.settimeout(0.05)
try:
    s.recv(10)
except TimeoutError as e:
    print("timeout", e.args, isinstance(e, socket.timeout))
s.settimeout(None)
c.send(b"q")
print("blocking recv", s.recv(1), s.getblocking())
fd = s.detach()
s2 = socket.socket(fileno=fd)
print("fromfd family", s2.family.name, s2.type.name)
s3 = s2.dup()
c.send(b"r")
print("dup recv", s3.recv(1))
for x in (s2, s3, c, a):
    x.close()
l, r = socket.socketpair()
l.sendall(b"pair")
print("socketpair", r.recv(4), l.family.name)
l.close()
r.close()
