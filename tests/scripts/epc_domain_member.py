"""An enclave of an EPC domain, driven line by line on stdin (run under the shim by
tests/test_epc_domain.py): its heap is one anonymous mmap of argv[1] pages, in the EPC.

Commands, each answered with one line: ``fill K`` (write a pattern of seed K to every page),
``check K`` (``ok`` if every page holds it), ``spin K`` (fill again and again until the next
line, which it eats; ``spun 1``), ``exit``.  It says ``ready`` first."""
import mmap
import select
import sys

PAGE = 4096
npages = int(sys.argv[1])
heap = mmap.mmap(-1, npages * PAGE)


def pattern(k: int, i: int) -> int:
    return (k * 31 + i) & 0xFF


print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "fill":
        k = int(arg)
        for i in range(npages):
            heap[i * PAGE] = pattern(k, i)
            heap[i * PAGE + PAGE - 1] = pattern(k, i)
        print("filled", flush=True)
    elif cmd == "check":
        k = int(arg)
        bad = [i for i in range(npages)
               if heap[i * PAGE] != pattern(k, i) or heap[i * PAGE + PAGE - 1] != pattern(k, i)]
        print("ok" if not bad else f"bad {len(bad)}", flush=True)
    elif cmd == "spin":
        # Busy until the next line arrives: rounds of writes over the whole heap.
        k, rounds = int(arg), 0
        while not select.select([sys.stdin], [], [], 0)[0]:
            for i in range(npages):
                heap[i * PAGE] = pattern(k, i)
                heap[i * PAGE + PAGE - 1] = pattern(k, i)
            rounds += 1
        sys.stdin.readline()
        print(f"spun {min(rounds, 1)}", flush=True)
    elif cmd == "exit":
        print("bye", flush=True)
        break
