"""An app that closes its stdio (fds 0-2) and then starts children, failing and not: each
outcome, and what the children wrote to the app's log, go to the files named by argv[1]
(stdout is gone).  The same natively and in the enclave (tests/test_attack_spawn_lowfds.py)."""
import os
import subprocess
import sys

out = sys.argv[1]
log = open(out + ".log", "w")           # fd 3: the children's stdout/stderr below
os.close(0)
os.close(1)
os.close(2)
MISSING = "/nonexistent/eleos-prog"
CASES = [
    ([MISSING], dict(stdout=log, stderr=log)),
    ([MISSING], dict(stderr=log)),
    ([MISSING], dict(stdin=log)),
    ([MISSING], dict(stdout=log)),
    ([MISSING], dict()),
    ([MISSING], dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)),
    ([MISSING], dict(stdout=log, stderr=log, close_fds=False)),
    (["true"], dict(stdout=log, stderr=log, cwd="/nonexistent/dir")),
    (["sh", "-c", "echo out; echo err >&2"], dict(stdout=log, stderr=log)),
    (["sh", "-c", "echo piped"], dict(stdout=subprocess.PIPE)),
]
results = []
for args, kwargs in CASES:
    what = f"{args[0]} {sorted(kwargs)}"
    try:
        done = subprocess.run(args, **kwargs)
        results.append(f"{what}: exit {done.returncode} {done.stdout!r}")
    except OSError as exc:
        results.append(f"{what}: {type(exc).__name__} {exc.errno} {exc.filename}")
    log.flush()
for actions in ([(os.POSIX_SPAWN_DUP2, log.fileno(), 1), (os.POSIX_SPAWN_DUP2, log.fileno(), 2)],
                [(os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                [(os.POSIX_SPAWN_CLOSE, 1), (os.POSIX_SPAWN_CLOSE, 2)]):
    try:
        pid = os.posix_spawn(MISSING, [MISSING], os.environ, file_actions=actions)
        results.append(f"posix_spawn {actions[0][0]}: started, {os.waitpid(pid, 0)[1]}")
    except OSError as exc:
        results.append(f"posix_spawn {actions[0][0]}: {type(exc).__name__} {exc.errno}")
log.close()
with open(out, "w") as f:
    f.write("\n".join(results) + "\n")
