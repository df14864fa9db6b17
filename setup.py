"""Builds the C core with cffi in API mode; each module's build script sits beside its C."""
from setuptools import setup

setup(
    cffi_modules=[
        "eleos_shim/_native/cpu_build.py:ffi",
        "untrusted/_native/host_build.py:ffi",
        "trusted/_native/enclave_build.py:ffi",
        "trusted/_native/suvm_build.py:ffi",
        "untrusted/_native/store_build.py:ffi",
        "eleos_shim/_native/epcm_build.py:ffi",
        "untrusted/_native/epc_build.py:ffi",
    ],
)
