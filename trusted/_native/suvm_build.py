"""cffi build of SUVM (trusted._native._suvm), enclave side: the core (suvm.c), its allocator
(suvm_heap.c) and the app-facing fast path (suvm_region.c), linked with libcrypto.  Run directly to build in place:
``.venv/bin/python trusted/_native/suvm_build.py``."""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

CDEF = """
    typedef struct suvm suvm_t;
    suvm_t *suvm_new(uint64_t cache_bytes, uint32_t page_size, uint32_t subpage, int policy,
                     uintptr_t store, uintptr_t store_base, uint64_t store_capacity,
                     uintptr_t grow_fn, uintptr_t discard_fn, uintptr_t cpu_charge_fn);
    void suvm_destroy(suvm_t *s);
    void suvm_set_pollute(suvm_t *s, uintptr_t cpu_pollute_fn);
    void suvm_set_overwrite(suvm_t *s, int skip);
    int suvm_reserve(suvm_t *s, uint64_t end);
    uint64_t suvm_reserved(suvm_t *s);
    int suvm_discard(suvm_t *s, uint64_t addr, uint64_t n);
    int suvm_read(suvm_t *s, uint64_t addr, void *dst, size_t n);
    int suvm_write(suvm_t *s, uint64_t addr, const void *src, size_t n);
    int suvm_fill(suvm_t *s, uint64_t addr, int byte, size_t n);
    int suvm_move(suvm_t *s, uint64_t dst, uint64_t src, size_t n);
    int suvm_compare(suvm_t *s, uint64_t addr, const void *buf, size_t n, int *result);
    size_t suvm_copy_resident(suvm_t *s, uint64_t addr, void *buf, size_t n, int write);
    int suvm_flush(suvm_t *s);
    int suvm_evict_all(suvm_t *s);
    void suvm_stats(suvm_t *s, uint64_t out[]);
    void suvm_reset_stats(suvm_t *s);
    uint32_t suvm_resize(suvm_t *s, uint32_t n);
    uint32_t suvm_cache_frames(suvm_t *s);
    int suvm_bench_access(suvm_t *s, const uint64_t *offsets, size_t n, size_t item, int write);
    int suvm_bench_mix(suvm_t *s, const uint64_t *offsets, const uint8_t *writes, size_t n, size_t item);
    void suvm_test_key(suvm_t *s, uint8_t out[16]);
    int suvm_test_half_evict(suvm_t *s, uint64_t addr);
    int suvm_test_sealed(suvm_t *s, uint64_t vpn, uint32_t sub, uint8_t nonce[12], uint8_t aad[24],
                         uint8_t tag[16]);
    int suvm_bench_raw_open(uint32_t page_size, uint64_t iters);
    typedef struct suvm_heap suvm_heap_t;
    suvm_heap_t *suvm_heap_new(suvm_t *s, uint32_t page_size, uint64_t capacity);
    int suvm_heap_alloc(suvm_heap_t *h, uint64_t n, uint64_t *addr, uint64_t *size);
    int suvm_heap_free(suvm_heap_t *h, uint64_t addr);
    uint64_t suvm_heap_allocated(suvm_heap_t *h);
    int suvm_heap_close(suvm_heap_t *h);
    void suvm_heap_free_struct(suvm_heap_t *h);
    uint32_t suvm_heap_resize(suvm_heap_t *h, uint32_t frames);
    uint32_t suvm_heap_cache_frames(suvm_heap_t *h);
    void suvm_heap_fork_prepare(suvm_heap_t *h);
    void suvm_heap_fork_parent(suvm_heap_t *h);
    int suvm_heap_fork_child(suvm_heap_t *h);
    int suvm_heap_stats(suvm_heap_t *h, uint64_t out[]);
    int suvm_region_register(void);
    uintptr_t suvm_bench_access_fn(void);

    #define SUVM_OK ...
    #define SUVM_EINTEGRITY ...
    #define SUVM_ERANGE ...
    #define SUVM_ENOMEM ...
    #define SUVM_EINVAL ...
    #define SUVM_FIFO ...
    #define SUVM_LRU ...
    #define SUVM_CLOCK ...
    #define SUVM_RANDOM ...
    #define SUVM_ST_COUNT ...
"""

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "trusted._native._suvm",
    '#include "suvm.h"\nint suvm_region_register(void);\n'
    "uintptr_t suvm_bench_access_fn(void) { return (uintptr_t)&suvm_bench_access; }\n",
    sources=[os.path.relpath(os.path.join(HERE, n), ROOT) for n in ("suvm.c", "suvm_heap.c", "suvm_region.c")],
    include_dirs=[HERE, os.path.join(ROOT, "eleos_shim", "include"), os.path.join(ROOT, "eleos_shim", "_native")],
    libraries=["crypto", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
    # suvm_region.c uses the full C API (a type with its own slots), not the stable ABI.
    py_limited_api=False,
)

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "eleos_shim", "_native"))
    from buildutil import compile_in_place
    compile_in_place(ffi, verbose="-v" in sys.argv)
