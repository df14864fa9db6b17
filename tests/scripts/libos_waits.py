"""Waits with a timeout: on a ready fd (selectors/epoll, select, poll) and on an idle one.

Under the rpc path, the waits that find an fd ready must not exit the enclave; the one wait
that finds nothing ready does (tests/test_rpc_shim.py counts them).  Prints what it saw."""
import select
import selectors
import socket

a, b = socket.socketpair()
a.sendall(b"ready")
with selectors.DefaultSelector() as sel:
    sel.register(b, selectors.EVENT_READ)
    print("selector", [(k.fileobj is b, ev) for k, ev in sel.select(5.0)])
print("select", select.select([b], [], [], 5.0)[0] == [b])
p = select.poll()
p.register(b, select.POLLIN)
print("poll", [(fd == b.fileno(), ev) for fd, ev in p.poll(5000)])
print("read", b.recv(16))
with selectors.DefaultSelector() as sel:
    sel.register(b, selectors.EVENT_READ)
    print("idle", sel.select(0.01))
a.close(), b.close()
