"""The signing key file: created with mode 0600, read back with its name checked."""

import os
from pathlib import Path

from ledger.core.errors import NoteError
from ledger.core.note import Signer
from ledger.errors import ConfigError
from ledger.settings import Settings


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
