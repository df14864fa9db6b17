"""Children that end every way a process can: their statuses, as the parent sees them."""
import os
import signal
import sys


def child(how):
    pid = os.fork()
    if pid:
        return pid
    if how == "return":
        sys.exit(0)
    if how == "exit3":
        sys.exit(3)
    if how == "_exit7":
        os._exit(7)
    if how == "raise":
        raise ValueError("child fails")
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(99)


for how in ("return", "exit3", "_exit7", "raise", "sigterm", "sigkill"):
    pid = child(how)
    wpid, status = os.waitpid(pid, 0)
    print(how, wpid == pid, os.WIFEXITED(status) and os.WEXITSTATUS(status),
          os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
# Before this process exits, nobody has written its stats: a child must not (it would write
# the parent's file, which the parent then writes over, or not, if it dies).
print("stats written by a child:", os.path.exists(os.environ.get("ELEOS_STATS", "")))
