"""An unmodified app whose working memory is anonymous mmap (tests/test_suvm_api.py runs it
natively and with SUVM memory; the output must be identical).  Only slicing, item access and
the file-like methods: no buffer protocol, as SUVM's secure pointers allow."""
import hashlib
import mmap
import struct

# A sieve of Eratosthenes in one byte per number.
N = 300_000
sieve = mmap.mmap(-1, N)
sieve[0:N] = b"\x01" * N
sieve[0] = sieve[1] = 0
i = 2
while i * i < N:
    if sieve[i]:
        sieve[i * i::i] = bytes(len(range(i * i, N, i)))
    i += 1
primes = [k for k, v in enumerate(sieve[:]) if v]
print("primes below", N, ":", len(primes), "largest", primes[-1])

# Fixed-size records (key, value) written with seek/write, sorted in place by key.
REC = struct.Struct("<QQ")
count = 20_000
table = mmap.mmap(-1, count * REC.size)
x = 12345
for k in range(count):
    x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
    table.write(REC.pack(x % 1_000_003, k))
recs = sorted(REC.unpack(table[j * REC.size:(j + 1) * REC.size]) for j in range(count))
for j, r in enumerate(recs):
    table[j * REC.size:(j + 1) * REC.size] = REC.pack(*r)
table.seek(0)
first = REC.unpack(table.read(REC.size))
print("smallest key", first[0], "from record", first[1])
print("key 1000 found at", table.find(struct.pack("<Q", recs[1000][0])) // REC.size)

# A rolling buffer: move and byte-level access.
ring = mmap.mmap(-1, 64 * 1024)
for r in range(50):
    ring.move(1, 0, len(ring) - 1)
    ring[0] = r
print("ring head", ring[0:8].hex(), "tail byte", ring[-1], "reversed head", ring[7::-1].hex())

h = hashlib.sha256()
for m in (sieve, table, ring):
    h.update(m[:])
    m.close()
print("checksum", h.hexdigest()[:32])
