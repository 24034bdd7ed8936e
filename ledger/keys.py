"""The signing key file (created with mode 0600, read back with its name checked), the key ring
(the key this process signs with and every log key it trusts), and the check, at start, that no
checkpoint of the log is signed by a key outside it.

Trust in a log key comes only from this process's configuration, never from the database: the
`signing_keys` table records which keys signed, but whoever can write to the database could add
a key there too. After a rotation the earlier keys' verifier keys are configured in
LEDGER_TRUSTED_KEYS, which is also how a replica still signing with the old key learns to trust
the new one during a rolling rotation.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ledger.core.errors import NoteError
from ledger.core.note import Signer, Verifier
from ledger.errors import ConfigError
from ledger.services.stores import LogReads
from ledger.settings import Settings


class KeyRing(NamedTuple):
    """The log key this process signs checkpoints with (the active one), the other log keys it
    trusts, and the webhook key derived from the active one."""

    signer: Verifier
    others: tuple[Verifier, ...]
    webhook: Verifier

    @property
    def log_keys(self) -> list[Verifier]:
        """Every log key whose checkpoints this process accepts, the active one first."""
        return [self.signer, *self.others]

    def trusts(self, key_id: str) -> bool:
        return any(v.id.hex() == key_id for v in self.log_keys)


def log_keys(signer: Signer, trusted: tuple[str, ...]) -> list[Verifier]:
    """The signer's verifier key, then the others of LEDGER_TRUSTED_KEYS (`trusted`), each once."""
    found = {signer.verifier.id: signer.verifier}
    for verifier in map(Verifier.from_vkey, trusted):
        found.setdefault(verifier.id, verifier)
    return list(found.values())


def key_ring(signer: Signer, trusted: tuple[str, ...], webhook: Verifier) -> KeyRing:
    active, *others = log_keys(signer, trusted)
    return KeyRing(active, tuple(others), webhook)


async def check_signers(store: LogReads, trusted: Sequence[Verifier]) -> None:
    """Refuse (ConfigError) a log with checkpoints signed by a log key not among `trusted`:
    most likely a rotation whose earlier key was left out of LEDGER_TRUSTED_KEYS; otherwise
    someone else's key, which is for an operator to look into before anything is served."""
    ids = {v.id.hex() for v in trusted}
    for key in await store.keys():
        if key.signed and key.key_id not in ids:
            raise ConfigError(
                f"the log's checkpoints of sizes {key.first_size} to {key.last_size} are signed by {key.vkey}, "
                "a key this server does not trust: if it is the log's key from before a rotation, "
                "add it to LEDGER_TRUSTED_KEYS; if it is not a key of yours, the database was written by another signer"
            )


def write_key_file(path: Path, name: str) -> Signer:
    """Create a new key at `path`; refuse to overwrite an existing one."""
    signer = Signer.generate(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two replicas starting together must not both generate and one overwrite the other.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.skey + "\n")
        f.flush()
        os.fsync(f.fileno())
    return signer


def read_key_file(path: Path, variable: str = "LEDGER_SIGNING_KEY") -> Signer:
    try:
        return Signer.from_skey(path.read_bytes().decode().strip())
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: cannot read key file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}={path}: not a signing key (not UTF-8 text)") from None
    except NoteError as exc:
        raise ConfigError(f"{variable}={path}: not a signing key ({exc})") from None


def load_signer(settings: Settings) -> Signer:
    """The configured key, or the data directory's own, generated on first start."""
    path = settings.signing_key_path
    expected = settings.key_name or settings.log_origin
    if settings.signing_key is None and not path.exists():
        try:
            return write_key_file(path, expected)
        except FileExistsError:
            pass  # another process created it a moment ago
    signer = read_key_file(path)
    if settings.key_name and signer.name != settings.key_name:
        raise ConfigError(f"LEDGER_KEY_NAME={settings.key_name}: the key in {path} is named {signer.name!r}")
    return signer
