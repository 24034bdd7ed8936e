"""The ledger's use cases, one module each, between the HTTP edge (and the CLI) and storage.

Each service is a small class given exactly the stores and parts it needs; `ledger.composition`
builds them all once per process.
"""
