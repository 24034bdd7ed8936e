"""The pure rules of the ledger: no I/O, only the standard library, msgspec and pynacl."""
