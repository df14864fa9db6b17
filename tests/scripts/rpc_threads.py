"""Four app threads make file and pipe calls at once (argv[1] rounds each); the output does
not depend on the interleaving."""
import os
import sys
import tempfile
import threading

rounds = int(sys.argv[1])
results = {}


def work(k):
    r, w = os.pipe()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"t{k}")
        total = 0
        for i in range(rounds):
            msg = f"{k}:{i};".encode()
            os.write(w, msg)
            total += len(os.read(r, 64))
            with open(path, "ab") as f:
                f.write(msg)
        with open(path, "rb") as f:
            data = f.read()
        results[k] = (total, data.count(b";"), os.stat(path).st_size == len(data))
    os.close(r)
    os.close(w)


threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for k in sorted(results):
    print(k, *results[k])
