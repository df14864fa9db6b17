"""stdlib http.server serving a directory to urllib.request, in one process."""
import http.server
import os
import tempfile
import threading
import urllib.error
import urllib.request
from functools import partial

root = tempfile.mkdtemp(prefix="libos-http-")
with open(os.path.join(root, "index.html"), "w") as f:
    f.write("<h1>inside the enclave</h1>\n")
with open(os.path.join(root, "data.bin"), "wb") as f:
    f.write(bytes(range(256)) * 400)


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=root))
t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
t.start()
base = "http://127.0.0.1:%d/" % server.server_address[1]
with urllib.request.urlopen(base + "index.html", timeout=10) as r:
    print(r.status, r.headers["Content-Type"], r.read())
with urllib.request.urlopen(base + "data.bin", timeout=10) as r:
    body = r.read()
    print(r.status, len(body), body == bytes(range(256)) * 400)
with urllib.request.urlopen(base, timeout=10) as r:
    print("listing has files", b"index.html" in r.read())
try:
    urllib.request.urlopen(base + "missing", timeout=10)
except urllib.error.HTTPError as e:
    print("missing", e.code)
    e.close()
server.shutdown()
t.join()
server.server_close()
for name in os.listdir(root):
    os.unlink(os.path.join(root, name))
os.rmdir(root)
