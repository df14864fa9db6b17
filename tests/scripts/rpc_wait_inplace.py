"""A wait that blocks, exit-less (ELEOS_RPC_WAIT=spin): one thread waits on an idle socket
while another makes its calls through the ring and then wakes it; a signal's handler cuts a
wait short.  Prints what it saw (tests/test_rpc_shim.py compares it with native)."""
import select
import signal
import socket
import sys
import threading

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
a, b = socket.socketpair()
woke = []
waiting = threading.Event()


def waiter():
    # Blocks until the main thread's byte arrives.  Had its wait tied up the one worker, the
    # main thread's calls would wait for it, and it would time out after 10 s.
    waiting.set()
    woke.append(select.select([b], [], [], 10.0)[0] == [b])


r, w = socket.socketpair()
t = threading.Thread(target=waiter)
t.start()
waiting.wait()
for i in range(rounds):          # the main thread's calls, while the waiter blocks
    w.sendall(b"x")
    assert r.recv(1) == b"x"
a.sendall(b"!")
t.join()
print("woken by the byte", woke == [True])


class Alarm(Exception):
    pass


def on_alarm(signum, frame):
    raise Alarm


signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.05)
try:
    select.select([r], [], [], 30.0)      # idle: only the signal ends it
    print("not interrupted")
except Alarm:
    print("interrupted by the signal")
for s in (a, b, r, w):
    s.close()
