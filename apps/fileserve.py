"""A small file server and its client in one process: the shim's first sample app.

It writes a set of files, serves them over TCP on 127.0.0.1 from a server thread, and a client
thread fetches every one several times and checks its digest.  It does only what an ordinary
program does (open/read/write/stat/listdir, sockets, selectors) and never imports eleos_shim,
so under ``python -m eleos_shim --mode sgx`` every one of those calls exits the enclave.

    python apps/fileserve.py [--files N] [--size BYTES] [--rounds R]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import selectors
import socket
import tempfile
import threading
import time


def make_files(root: str, count: int, size: int) -> dict[str, str]:
    digests = {}
    for i in range(count):
        name = f"file{i:04d}.bin"
        data = hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data[:size])
        digests[name] = hashlib.sha256(data[:size]).hexdigest()
    return digests


def serve(listener: socket.socket, root: str, stop: threading.Event) -> None:
    """One request per connection: 'GET name\\n' -> 8-byte length + contents."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while not stop.is_set():
        for _key, _ in sel.select(timeout=0.1):
            conn, _ = listener.accept()
            with conn:
                request = conn.makefile("rb").readline().decode().split()
                if len(request) != 2 or request[0] != "GET":
                    conn.sendall((0).to_bytes(8, "big"))
                    continue
                path = os.path.join(root, os.path.basename(request[1]))
                try:
                    size = os.stat(path).st_size
                    with open(path, "rb") as f:
                        conn.sendall(size.to_bytes(8, "big") + f.read())
                except FileNotFoundError:
                    conn.sendall((0).to_bytes(8, "big"))
    sel.close()


def fetch(port: int, name: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {name}\n".encode())
        f = s.makefile("rb")
        size = int.from_bytes(f.read(8), "big")
        return f.read(size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fileserve-") as root:
        t0 = time.perf_counter()
        digests = make_files(root, args.files, args.size)
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        stop = threading.Event()
        server = threading.Thread(target=serve, args=(listener, root, stop))
        server.start()
        errors = fetched = 0
        try:
            for _ in range(args.rounds):
                for name in sorted(os.listdir(root)):
                    fetched += 1
                    if hashlib.sha256(fetch(port, name)).hexdigest() != digests[name]:
                        errors += 1
        finally:
            stop.set()
            server.join()
            listener.close()
        elapsed = time.perf_counter() - t0
    print(f"fetched {fetched} files of {args.size} bytes, {errors} bad digests")
    print(f"elapsed {elapsed:.3f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
