"""select.select, select.poll, select.epoll and selectors over a socketpair and a pipe."""
import os
import select
import selectors
import socket

a, b = socket.socketpair()
r, w = os.pipe()
print("select idle", select.select([a, r], [], [], 0))
b.send(b"x")
os.write(w, b"y")
rl, wl, xl = select.select([a, r], [a], [], 5)
print("select ready", [x is a for x in rl], len(wl), xl)
p = select.poll()
p.register(a, select.POLLIN)
p.register(r, select.POLLIN)
print("poll", sorted((fd == a.fileno(), ev) for fd, ev in p.poll(1000)))
p.unregister(r)
print("poll one", [(fd == a.fileno(), ev) for fd, ev in p.poll(0)])
try:
    p.modify(w, select.POLLOUT)
except FileNotFoundError:
    print("modify unregistered: FileNotFoundError")
with select.epoll() as ep:
    ep.register(a.fileno(), select.EPOLLIN)
    ep.register(r, select.EPOLLIN)
    print("epoll", sorted((fd == a.fileno(), ev) for fd, ev in ep.poll(1)))
    ep.unregister(r)
    print("epoll after read", a.recv(1), ep.poll(0))
print("epoll closed", ep.closed)
os.read(r, 1)
for cls in (selectors.SelectSelector, selectors.PollSelector, selectors.EpollSelector,
            selectors.DefaultSelector):
    with cls() as sel:
        sel.register(a, selectors.EVENT_READ, data="a")
        sel.register(w, selectors.EVENT_WRITE, data="w")
        print(cls.__name__, "idle", sorted(k.data for k, _ in sel.select(0)))
        b.send(b"z")
        print(cls.__name__, "ready", sorted((k.data, ev) for k, ev in sel.select(5)))
        a.recv(1)
for x in (a, b):
    x.close()
os.close(r)
os.close(w)
