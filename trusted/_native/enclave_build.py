"""cffi build of the enclave's native stubs (trusted._native._enclave): the OCALL stub and the
RPC producer.  Every ``*.c`` here except ``suvm*`` (its own module) and generated ``_*`` files,
each with its ``.cdef``.  Run directly to build in place."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "eleos_shim", "_native"))
from buildutil import compile_in_place, module_ffi  # noqa: E402

ffi = module_ffi("trusted._native._enclave", os.path.dirname(os.path.abspath(__file__)),
                 skip=("suvm",))

if __name__ == "__main__":
    compile_in_place(ffi, verbose="-v" in sys.argv)
