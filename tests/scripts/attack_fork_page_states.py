"""Under sgx: the host's EPC driver says every page of the app's map is "new" (never touched)
when the parent checkpoints it for a fork.  The checkpoint is the enclave's: what the driver
says of a page must not decide what the child gets.  The child reports whether it sees the
parent's data in every page (argv[1]: the map's size in MB; the EPC is smaller, so some pages
are evicted at the fork and some resident)."""
import mmap
import os

from untrusted.epc import EPCDriver

size = int(os.sys.argv[1]) << 20
m = mmap.mmap(-1, size)
for i in range(0, size, 4096):
    m[i:i + 8] = (i // 4096 + 1).to_bytes(8, "little")
EPCDriver.page_states = lambda self, rid, npages: ["new"] * npages     # the host's lie
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    bad = sum(m[i:i + 8] != (i // 4096 + 1).to_bytes(8, "little") for i in range(0, size, 4096))
    os.write(w, f"child bad pages {bad}\n".encode())
    os._exit(0)
os.close(w)
with os.fdopen(r) as f:
    print(f.read().strip())
_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status))
