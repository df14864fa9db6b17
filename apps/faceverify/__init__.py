"""Face verification server (the Eleos paper's biometric identity server) and its clients.

App code: it runs unmodified natively or inside the modeled enclave under ``python -m
eleos_shim``, and never imports the shim.  features: LBP templates; protocol: sealed wire
format; data: faces, probes, synthetic identities; server: the event loop; load: the
closed-loop workload generator.
"""
