"""A TCP server thread and a client thread in the same process (the same enclave): blocking
accept, recv and connect on both sides, argv[1] request/reply round trips.  With a single RPC
worker this only finishes if no blocking call ties the worker up."""
import socket
import sys
import threading

rounds = int(sys.argv[1])
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]
served = []


def server():
    conn, _ = srv.accept()              # blocks until the client connects
    with conn:
        for _ in range(rounds):
            data = conn.recv(64)        # blocks until the client sends
            if not data:
                break
            conn.sendall(data.upper())
            served.append(len(data))


t = threading.Thread(target=server)
t.start()
replies = 0
with socket.create_connection(("127.0.0.1", port)) as c:
    for i in range(rounds):
        c.sendall(b"ping %d" % i)
        if c.recv(64) == (b"PING %d" % i):   # blocks until the server replies
            replies += 1
t.join()
srv.close()
print("replies", replies, "served", len(served))
