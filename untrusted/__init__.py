"""untrusted: everything the host runs (OCALL handlers, RPC workers, the SGX driver model,
the SUVM backing store).  Never imports ``trusted``: it sees the enclave only through the ABI.
"""
