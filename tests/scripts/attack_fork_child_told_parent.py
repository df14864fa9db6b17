"""A host whose fork(2) swaps its answers: argv[2] == "child": the real child is answered a
pid (LIE), as if it were the parent; "parent": the parent is answered 0, as if it were the
child (the real child gets its honest 0).  Run under the shim, argv[1] its memory (epc, suvm).

The fork(2) the loader makes (eleos_shim/fork.py) is ``posix.fork``: the host's answer, which
this script replaces.  Whatever the answer, the child process must be a new enclave (its own
SUVM key, EPC regions of its own, not the parent's shared memory) and the parent must stay
the enclave it was; the process told the other's answer gets an IagoError from os.fork().

The child reports on a pipe: what os.fork() did in it, whether its SUVM key is the parent's
(suvm); it then writes an EPC/SUVM map, which must not reach the parent's.  The parent
prints the child's report, what os.fork() did in it and its map; every child is reaped.
"""
import mmap
import os
import posix
import sys

from eleos_shim.errors import IagoError

LIE = 4242
memory, lied_to = sys.argv[1], sys.argv[2]

def key():
    from eleos_shim import suvm
    from trusted.suvm import ffi, lib
    out = ffi.new("uint8_t[16]")
    lib.suvm_test_key(suvm.instance()._h, out)
    return bytes(out)


m = mmap.mmap(-1, 1 << 20)
m[:5] = b"first"
k1 = key() if memory == "suvm" else b""
r, w = os.pipe()
real_fork = posix.fork
children = []


def lying_fork():
    pid = real_fork()
    if pid:
        children.append(pid)
        return 0 if lied_to == "parent" else pid
    return LIE if lied_to == "child" else 0


posix.fork = lying_fork
me = os.getpid()
try:
    got = os.fork()
    what = f"returned {'the lie' if got == LIE else got}"
except IagoError as e:
    what = "IagoError" if "fork" in str(e) else f"IagoError? {e}"
posix.fork = real_fork
if os.getpid() != me:
    # the child (whatever it was told)
    same_key = (key() == k1) if memory == "suvm" else None
    m[:5] = b"child"
    os.write(w, f"{what};{same_key}\n".encode())
    os._exit(0)
os.close(w)
with os.fdopen(r) as f:
    report = f.read().strip()
for pid in children:
    os.waitpid(pid, 0)
child_what, same_key = report.split(";")
print("child os.fork", child_what)
print("parent os.fork", "a pid" if what == f"returned {children[0]}" else what)
if memory == "suvm":
    print("child key is the parent's", same_key)
if memory == "suvm":
    print("parent key kept", key() == k1)
print("parent map", bytes(m[:5]))
with open(sys.argv[3], "w") as f:          # the parent's calls still work
    f.write("parent still runs\n")
