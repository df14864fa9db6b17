"""trusted: everything inside the modeled enclave (the LibOS shim, syscall stubs, SUVM).

Never imports ``untrusted``; what it needs from the host arrives from the loader as a bridge
(addresses of host functions and untrusted memory), and everything the host returns is checked.
"""
