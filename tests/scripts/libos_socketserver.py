"""socketserver.ThreadingTCPServer with a line handler, served to a client in this process."""
import socket
import socketserver
import threading


class Upper(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upper) as server:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    for i in range(3):
        with socket.create_connection(server.server_address) as c:
            f = c.makefile("rwb")
            f.write(b"request %d\n" % i)
            f.flush()
            print(f.readline())
            f.close()
    server.shutdown()
    t.join()
print("served")
