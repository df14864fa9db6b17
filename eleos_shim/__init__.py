"""eleos-shim: Eleos (EuroSys'17) re-created for a modeled SGX enclave.

``python -m eleos_shim app.py`` runs an unmodified Python app inside the modeled enclave.
This package is the loader and the modeled CPU; it is the only place that knows both the
trusted (enclave) and the untrusted (host) halves.  Kept light: importing it pulls in neither.
"""
from eleos_shim.errors import EnclaveSecurityError, IagoError, IntegrityError

__version__ = "0.1.0"
__all__ = ["EnclaveSecurityError", "IagoError", "IntegrityError", "__version__"]
