"""Blocks in accept() (or select()) until Ctrl-C; reports the KeyboardInterrupt (exit 3)."""
import select
import socket
import sys

srv = socket.create_server(("127.0.0.1", 0))
a, b = socket.socketpair()
try:
    print("blocking", flush=True)
    if sys.argv[1] == "accept":
        srv.accept()
    else:
        select.select([a], [], [])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
