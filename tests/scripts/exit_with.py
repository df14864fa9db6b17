"""Exits the way argv[1] says: code N, an uncaught exception, KeyboardInterrupt, or SIGTERM."""
import os
import signal
import sys

how = sys.argv[1]
with open(os.devnull, "wb") as f:  # at least one routed call before leaving
    f.write(b"x")
sys.stdout.write("before\n")
sys.stdout.flush()
if how == "raise":
    def inner():
        raise ValueError("boom from the app")
    inner()
elif how == "interrupt":
    raise KeyboardInterrupt
elif how == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pause()
elif how == "sigint":
    os.kill(os.getpid(), signal.SIGINT)
    signal.pause()
else:
    sys.exit(int(how))
