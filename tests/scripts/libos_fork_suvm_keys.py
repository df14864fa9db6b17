"""Under eleos: the forked child seals with a key of its own, its copy of the sealed store
re-sealed under it; argv[1] == "tamper": the host flips a bit of a stored page first."""
import mmap
import os
import sys

from eleos_shim import suvm
from trusted.suvm import ffi, lib

inst = suvm.instance()


def key():
    out = ffi.new("uint8_t[16]")
    lib.suvm_test_key(inst._h, out)
    return bytes(out)


m = mmap.mmap(-1, 4 << 20)
for i in range(0, len(m), 4096):
    m[i:i + 4] = b"page"
inst.evict_all()                  # every page sealed in the store, under the parent's key
if sys.argv[1] == "tamper":
    inst.backing_store.flip_bit(m._lo // 4096 + 3)
k1 = key()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    k2 = key()
    ok = all(m[i:i + 4] == b"page" for i in range(0, len(m), 4096))
    os.write(w, k2 + bytes([ok]))
    os._exit(0)
os.close(w)
got = os.read(r, 17)
_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status))
if got:
    print("keys differ", got[:16] != k1, "child read all", bool(got[16]))
print("parent key kept", key() == k1)
