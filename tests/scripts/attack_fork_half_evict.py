"""Under eleos: the fork takes the process from under a thread that is evicting a dirty page
(SUVM is not quiesced at the fork): here the page's frame is left claimed and the page
unpublished, as evict_frame leaves it before it seals (suvm_test_half_evict).  The page's
content is then in no copy the child can open; the child must not read the stored copy from
before instead (zero here: the page was never written back).  The parent prints the child's
exit status and, if the child ran, what it read."""
import mmap
import os

from eleos_shim import suvm
from trusted.suvm import lib

inst = suvm.instance()
m = mmap.mmap(-1, 1 << 16)
m[:8] = b"enclave!"                # resident and dirty, never written back
assert lib.suvm_test_half_evict(inst._h, m._lo) == lib.SUVM_OK
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, bytes(m[:8]))
    os._exit(0)
os.close(w)
got = os.read(r, 8)
_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status))
if got:
    print("child read", got)
