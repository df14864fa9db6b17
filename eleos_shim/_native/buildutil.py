"""Shared helper for the cffi build scripts: one module from several C files, each paired with
a ``.cdef`` file that declares what Python may call.  Used at build time only."""
import glob
import os

from cffi import FFI

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
INCLUDE = os.path.join(ROOT, "eleos_shim", "include")
NATIVE_INCLUDE = os.path.join(ROOT, "eleos_shim", "_native")


def _abi_cdef() -> str:
    # Read the ABI declarations without importing the eleos_shim package (build isolation).
    path = os.path.join(ROOT, "eleos_shim", "abi.py")
    ns: dict = {"__file__": path, "__name__": "eleos_shim_abi"}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), ns)
    return ns["header_cdef"]()


def module_ffi(module: str, directory: str, skip: tuple[str, ...] = (), libraries=()) -> FFI:
    sources, cdefs, protos = [], [_abi_cdef()], []
    for path in sorted(glob.glob(os.path.join(directory, "*.c"))):
        name = os.path.basename(path)
        if name.startswith("_") or name.startswith(skip):
            continue
        sources.append(os.path.relpath(path, ROOT))
        cdef = path[:-2] + ".cdef"
        if os.path.exists(cdef):
            with open(cdef) as f:
                text = f.read()
            cdefs.append(text)
            protos.append(text)   # plain C prototypes: also declared for the generated C
    ffi = FFI()
    ffi.cdef("\n".join(cdefs))
    ffi.set_source(module, '#include <stdint.h>\n#include "eleos_abi.h"\n' + "\n".join(protos),
                   sources=sources,
                   include_dirs=[INCLUDE, NATIVE_INCLUDE, directory],
                   libraries=list(libraries),
                   extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"])
    return ffi


def compile_in_place(ffi: FFI, verbose: bool = False) -> str:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return ffi.compile(tmpdir=ROOT, verbose=verbose)
    finally:
        os.chdir(cwd)
