"""cffi build of the SUVM backing store (untrusted._native._store), host side.  Run directly
to build in place: ``.venv/bin/python untrusted/_native/store_build.py``."""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

DECLS = """
    uintptr_t store_new(uint64_t capacity);
    void store_destroy(uintptr_t handle);
    uintptr_t store_base(uintptr_t handle);
    uint64_t store_capacity(uintptr_t handle);
    uint64_t store_committed(uintptr_t handle);
    void store_after_fork(uintptr_t handle);
    int64_t store_grow(void *handle, uint64_t bytes);
    void store_discard(void *handle, uint64_t off, uint64_t len);
    uintptr_t store_grow_fn(void);
    uintptr_t store_discard_fn(void);
    uintptr_t store_racer_new(int cpu);
    void store_racer_arm(uintptr_t handle, uintptr_t addr, uint32_t count, uint32_t stride,
                         uint8_t mask, int set);
    uint64_t store_racer_disarm(uintptr_t handle);
    void store_racer_free(uintptr_t handle);
"""
ffi = FFI()
ffi.cdef(DECLS)
# The same prototypes head the generated C, so the compiler checks them against store.c.
ffi.set_source("untrusted._native._store", "#include <stdint.h>\n" + DECLS, sources=[os.path.relpath(os.path.join(HERE, "store.c"), ROOT)],
               libraries=["pthread"], extra_compile_args=["-O2", "-std=gnu11", "-Wall"])

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "eleos_shim", "_native"))
    from buildutil import compile_in_place
    compile_in_place(ffi, verbose="-v" in sys.argv)
