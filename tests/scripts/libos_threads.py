"""Four app threads at once, each with its own file and its own TCP connection to one server
thread (all in the same enclave): results are printed in a fixed order."""
import os
import socket
import tempfile
import threading

N_THREADS, ROUNDS = 4, 50
top = tempfile.mkdtemp(prefix="libos-threads-")
srv = socket.create_server(("127.0.0.1", 0))
srv.listen(N_THREADS)


def serve():
    conns = [srv.accept()[0] for _ in range(N_THREADS)]
    handlers = [threading.Thread(target=echo, args=(c,)) for c in conns]
    for h in handlers:
        h.start()
    for h in handlers:
        h.join()


def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


results = [None] * N_THREADS


def worker(i):
    path = os.path.join(top, f"t{i}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    for r in range(ROUNDS):
        os.write(fd, b"%d:%d\n" % (i, r))
    os.close(fd)
    with open(path) as f:
        lines = f.read().splitlines()
    echoed = 0
    with socket.create_connection(srv.getsockname()) as c:
        for r in range(ROUNDS):
            msg = b"thread %d round %d" % (i, r)
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += c.recv(len(msg) - len(got))
            echoed += got == msg
    results[i] = (len(lines), lines[-1], echoed)
    os.unlink(path)


server = threading.Thread(target=serve)
server.start()
workers = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
for w in workers:
    w.start()
for w in workers:
    w.join()
server.join()
srv.close()
os.rmdir(top)
for i, r in enumerate(results):
    print(i, r)
