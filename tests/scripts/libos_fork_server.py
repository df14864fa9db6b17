"""socketserver.ForkingTCPServer served in a thread (as CPython's tests do) to a client in the
main thread; each request is handled in a forked child that reads the parent's heap."""
import mmap
import os
import socket
import socketserver
import threading

heap = mmap.mmap(-1, 1 << 20)
heap[4096:4096 + 11] = b"from parent"


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(line.upper().rstrip() + b" " + heap[4096:4096 + 11] +
                         b" " + str(os.getpid() != PARENT).encode() + b"\n")


PARENT = os.getpid()
with socketserver.ForkingTCPServer(("127.0.0.1", 0), Handler) as server:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    for i in range(4):
        with socket.create_connection(server.server_address) as c:
            c.sendall(b"request %d\n" % i)
            print(c.makefile("rb").readline().decode().strip())
    server.shutdown()
    t.join()
print("served; children left:", len(server.active_children or ()))
