"""The app exits while one thread is blocked in accept and others are making calls through the
ring: the process must end (workers stopped and joined) with the app's exit status."""
import os
import socket
import sys
import threading

srv = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=srv.accept, daemon=True).start()     # blocked in accept forever
started = threading.Barrier(3)


def hammer():
    fd = os.open(os.devnull, os.O_WRONLY)
    os.write(fd, b"x")
    started.wait()              # main exits only once both are writing
    while True:
        os.write(fd, b"x")


for _ in range(2):
    threading.Thread(target=hammer, daemon=True).start()
started.wait()
print("exiting with calls in flight")
sys.stdout.flush()
sys.exit(3)
