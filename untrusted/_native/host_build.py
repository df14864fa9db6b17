"""cffi build of the host's native core (untrusted._native._host): the OCALL handlers and the
RPC worker pool.  Every ``*.c`` here except ``epc*`` / ``store*`` (their own modules) and
generated ``_*`` files, each with its ``.cdef``.  Run directly to build in place."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "eleos_shim", "_native"))
from buildutil import compile_in_place, module_ffi  # noqa: E402

ffi = module_ffi("untrusted._native._host", os.path.dirname(os.path.abspath(__file__)),
                 skip=("epc", "store"), libraries=("pthread",))

if __name__ == "__main__":
    compile_in_place(ffi, verbose="-v" in sys.argv)
