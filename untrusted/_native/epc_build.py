"""cffi build of the SGX driver model (untrusted._native._epc): EPC frames, userfaultfd / SIGSEGV
traps, ksgxswapd-style reclaim, and the shared EPC of a domain (epc_domain.c).  Its own module (the host module's build skips ``epc*``).
Run directly to build in place."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "eleos_shim", "_native"))
from buildutil import INCLUDE, ROOT, compile_in_place  # noqa: E402
from cffi import FFI  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

ffi = FFI()
for header in ("epc_driver.h", "epc_domain.h"):
    with open(os.path.join(HERE, header)) as f:
        # The header's declarations are the cdef (minus the preprocessor lines cffi cannot read).
        ffi.cdef("\n".join(line for line in f.read().splitlines()
                            if not line.startswith(("#ifndef", "#endif", "#include", "#define EPC_DRIVER_H",
                                                    "#define EPC_DOMAIN_H"))))
ffi.set_source("untrusted._native._epc",
               '#include "eleos_abi.h"\n#include "epc_driver.h"\n#include "epc_domain.h"\n',
               sources=[os.path.relpath(os.path.join(HERE, c), ROOT) for c in ("epc_driver.c", "epc_trap.c", "epc_domain.c")],
               include_dirs=[INCLUDE, HERE], libraries=["pthread"],
               extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"])

if __name__ == "__main__":
    compile_in_place(ffi, verbose="-v" in sys.argv)
