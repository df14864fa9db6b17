"""cffi build of the modeled CPU's paging instructions (eleos_shim._native._epcm): EPA, EWB,
ELDU, EREMOVE and the version array.  Run directly to build in place."""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

ffi = FFI()
ffi.cdef("""
    #define EPCM_OK 0
    #define EPCM_ERR_SLOT_OCCUPIED 1
    #define EPCM_ERR_SLOT_EMPTY 2
    #define EPCM_ERR_MAC 3
    #define EPCM_ERR_BAD_SLOT 4
    #define EPCM_ERR_CRYPTO 5
    #define EPCM_ERR_BAD_ADDR 6
    #define EPCM_ERR_INSTALL 7
    #define EPCM_ERR_BUSY 8
    #define EPCM_ERR_BAD_BUFFER 9
    int epcm_init(void);
    uint64_t epcm_epa(uint64_t n);
    void epcm_eremove(uint64_t first_slot, uint64_t n);
    int epcm_region_add(uint64_t base, uint64_t nbytes, uint64_t va_first, int memfd);
    int epcm_region_remove(uint64_t base);
    int epcm_ewb(uint64_t linaddr, uint64_t slot, void *out_page, void *out_pcmd);
    int epcm_eldu(uint64_t linaddr, uint64_t slot, const void *page, const void *pcmd, int uffd,
                  uint64_t result[2]);
    void epcm_arm(int signum, int tid);
    void epcm_status(uint64_t out[8]);
    int epcm_dead(void);
    void epcm_reset(void);
    void epcm_fork_child(void);
    uintptr_t epcm_ewb_fn(void);
    uintptr_t epcm_eldu_fn(void);
""")
with open(os.path.join(HERE, "epcm.c")) as f:
    ffi.set_source("eleos_shim._native._epcm", f.read(),
                   include_dirs=[HERE, os.path.join(ROOT, "eleos_shim", "include")],
                   libraries=["crypto", "pthread"],
                   extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"])

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "eleos_shim", "_native"))
    from buildutil import compile_in_place
    compile_in_place(ffi, verbose="-v" in sys.argv)
