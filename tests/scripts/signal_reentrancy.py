"""An unmodified app whose signal handler makes routed calls while the main thread is in the
middle of its own (issue 13): ``pipe`` is the small example (SIGALRM writes to a pipe that
the main thread is reading), ``stress`` a timer every ~0.2 ms whose handler writes while the
main thread preads known file content a bounded number of times, ``fds`` a handler that
opens and closes a file while the main thread does.  Prints what it got; the test compares
with what a plain Python prints."""
import os
import signal
import sys
import tempfile


def pipe_example() -> None:
    r, w = os.pipe()
    signal.signal(signal.SIGALRM, lambda *a: os.write(w, b"bar"))
    signal.setitimer(signal.ITIMER_REAL, 0.05)     # signal.alarm(1), 20 times sooner
    print(os.read(r, 10))


def stress(count: int) -> None:
    content = bytes(range(256)) * 16
    fd, path = tempfile.mkstemp(prefix="eleos-sig-")
    try:
        os.write(fd, content)
        sink = os.open(os.devnull, os.O_WRONLY)
        r, w = os.pipe()
        os.set_blocking(r, False)
        fired = [0]

        def handler(*_):
            fired[0] += 1
            os.write(sink, b"HANDLER!" * 8)      # the data path (one crossing)
            os.write(w, b"h")                    # and a pipe, read back below
            os.pread(fd, 16, 4000)               # the general path, nested

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        wrong = 0
        try:
            for i in range(count):
                off = (i * 61) % 4000
                if os.pread(fd, 64, off) != content[off:off + 64]:
                    wrong += 1
                if i % 64 == 0:                  # the data path inward, interrupted too
                    try:
                        got = os.read(r, 4096)
                    except BlockingIOError:
                        got = b""
                    if got.strip(b"h"):
                        wrong += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
        print(f"wrong {wrong} of {count} (handler ran: {fired[0] > 0})")
        os.close(sink), os.close(r), os.close(w)
    finally:
        os.close(fd)
        os.unlink(path)


def fds(count: int) -> None:
    """The handler opens and closes a file while the main thread does (the enclave's fd
    table is updated from both)."""
    fd, path = tempfile.mkstemp(prefix="eleos-sig-")
    os.close(fd)
    try:
        signal.signal(signal.SIGALRM, lambda *a: os.close(os.open(os.devnull, os.O_RDONLY)))
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        try:
            for _ in range(count):
                os.close(os.open(path, os.O_RDONLY))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
        print(f"opened and closed {count}")
    finally:
        os.unlink(path)


if __name__ == "__main__":
    {"pipe": lambda: pipe_example(), "stress": lambda: stress(int(sys.argv[2])),
     "fds": lambda: fds(int(sys.argv[2]))}[sys.argv[1]]()
