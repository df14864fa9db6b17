"""Errors that cross the trust boundary (neutral module: both halves may import it).

They are fail-stop on purpose, like pyca/cryptography's InvalidTag: an enclave that was fed a
tampered page or an impossible syscall result must not go on as if nothing happened.
"""


class EnclaveSecurityError(Exception):
    """The host broke the enclave's guarantees; the data involved is not returned."""


class IntegrityError(EnclaveSecurityError):
    """A sealed page failed its AES-GCM check: tampered, swapped with another, or replayed."""


class IagoError(EnclaveSecurityError):
    """A syscall result the host returned is impossible (Iago attack): more bytes than asked,
    a negative length, an fd the enclave never opened, a corrupted RPC slot."""
