"""Under sgx: an EPC map made after the parent's checkpoint and before its fork(2), as another
thread of the app may while the host holds the fork back (here the host's fork(2), posix.fork,
makes it itself, first).  Such a map is in no checkpoint: the child must not keep it on the
parent's memory.  The child writes it; the parent prints what it then reads there and the
child's exit status."""
import mmap
import os
import posix

real = posix.fork
late = []


def fork_after_a_map():
    m = mmap.mmap(-1, 1 << 16)
    m[:4] = b"late"
    late.append(m)
    return real()


posix.fork = fork_after_a_map
pid = os.fork()
posix.fork = real
m = late[0]
if pid == 0:
    m[:4] = b"kid!"
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("parent sees", bytes(m[:4]))
print("child status", os.waitstatus_to_exitcode(status))
