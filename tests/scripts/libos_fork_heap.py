"""Fork with a heap larger than the EPC / the SUVM cache: the child sees the parent's data,
each side's later writes stay its own, both page, and the child's file, socket and pipe calls
work.  argv: heap MB, a scratch directory, the port of a 127.0.0.1 listener (the test's)."""
import mmap
import os
import socket
import sys

MB, tmp, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
N = MB << 20
PAGES = N // 4096


def fill(m, tag):
    for i in range(PAGES):
        m[i * 4096:i * 4096 + 16] = tag + i.to_bytes(8, "little")


def bad(m, tag):
    return sum(m[i * 4096:i * 4096 + 16] != tag + i.to_bytes(8, "little") for i in range(PAGES))


big = mmap.mmap(-1, N)
small = mmap.mmap(-1, 10000)          # a second map, not page-sized
fill(big, b"PARENT<1")
small[9990:10000] = b"small tail"
c2p_r, c2p_w = os.pipe()
p2c_r, p2c_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(c2p_r)
    os.close(p2c_w)
    seen = bad(big, b"PARENT<1"), small[9990:10000] == b"small tail"
    fill(big, b"CHILD!<2")             # pages through the child's own EPC / cache
    small[0:5] = b"child"
    names = set()
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/comm") as f:
            names.add(f.read().strip())
    fd = os.open(os.path.join(tmp, "child.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for k in range(37):
        os.write(fd, b"line %d\n" % k)
    os.close(fd)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"child says hello")
        reply = s.recv(100)
    os.write(c2p_w, b"1")                     # the parent may now write
    assert os.read(p2c_r, 1) == b"2"          # ... it has
    after = bad(big, b"CHILD!<2"), small[0:5] == b"child"
    with open(os.path.join(tmp, "child.out"), "w") as f:
        print(f"child saw bad={seen[0]} small={seen[1]}", file=f)
        print(f"child after bad={after[0]} small={after[1]}", file=f)
        print(f"child reply={reply!r}", file=f)
        print(f"child threads={' '.join(sorted(n for n in names if n.startswith('eleos')))}",
              file=f)
    os._exit(5)
os.close(c2p_w)
os.close(p2c_r)
assert os.read(c2p_r, 1) == b"1"
print(f"parent after child wrote bad={bad(big, b'PARENT<1')} small={small[0:5] != b'child'}")
fill(big, b"PARENT<3")
small[0:5] = b"paren"
os.write(p2c_w, b"2")
_, status = os.waitpid(pid, 0)
print(f"child exit {os.waitstatus_to_exitcode(status)}")
print(f"parent end bad={bad(big, b'PARENT<3')}")
with open(os.path.join(tmp, "child.out")) as f:
    print(f.read(), end="")
with open(os.path.join(tmp, "child.txt")) as f:
    print(f"child file lines={len(f.readlines())}")
