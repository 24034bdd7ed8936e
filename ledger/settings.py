"""Configuration from the environment (CONTRACT section 5), checked once at start."""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

import msgspec
import platformdirs

from ledger.core.errors import NoteError
from ledger.core.note import Verifier
from ledger.core.purposes import BUILT_IN, Registry, parse_registry
from ledger.errors import ConfigError

DEFAULT_ORIGIN = "consent-ledger.localhost/log"
# Secrets that may also come from a file named by LEDGER_<NAME>_FILE (CONTRACT section 6): an
# orchestrator mounts secrets as files, which, unlike environment variables, no child process,
# crash report or `/proc/<pid>/environ` reader inherits.
FILE_VARIANTS = ("LEDGER_DATABASE_URL", "LEDGER_ADMIN_TOKEN", "LEDGER_TOMBSTONE_KEY")
KNOWN = {
    "LEDGER_DATABASE_URL",
    "LEDGER_DATA_DIR",
    "LEDGER_SIGNING_KEY",
    "LEDGER_TRUSTED_KEYS",
    "LEDGER_LOG_ORIGIN",
    "LEDGER_KEY_NAME",
    "LEDGER_PURPOSES",
    "LEDGER_ADMIN_TOKEN",
    "LEDGER_CONSISTENCY_WAIT_MS",
    "LEDGER_MAX_STALENESS_MS",
    "LEDGER_CACHE_SIZE",
    "LEDGER_WORKERS",
    "LEDGER_WEBHOOK_ALLOW_PRIVATE",
    "LEDGER_TOMBSTONE_KEY",
    "LEDGER_LOG_FORMAT",
    "LEDGER_WATCH_RETENTION",
    *(f"{name}_FILE" for name in FILE_VARIANTS),
}
MIN_ADMIN_TOKEN_LENGTH = 32
LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    data_dir: Path = Path(platformdirs.user_data_dir("consent-ledger"))
    signing_key: Path | None = None
    # Verifier keys of the log's other signing keys (key rotation), one string each.
    trusted_keys: tuple[str, ...] = ()
    log_origin: str = DEFAULT_ORIGIN
    key_name: str | None = None
    purposes: Path | None = None
    registry: Registry = BUILT_IN
    admin_token: str | None = None
    consistency_wait_ms: int = 1000
    max_staleness_ms: int = 2000
    cache_size: int = 100_000
    workers: int = 1
    webhook_allow_private: bool = False
    tombstone_key: str | None = None
    # None: json unless stderr is a terminal (decided by ledger.logs, which owns stderr).
    log_format: LogFormat | None = None
    # Log entries a GET /v1/watch resume point may be behind and still be replayed; further
    # behind, the stream starts with a resync event. 100,000 entries: about a minute and a half
    # of 24 writers at full speed, or a day of a busy app; replaying them is 50 reads of a page.
    watch_retention: int = 100_000

    @property
    def embedded(self) -> bool:
        return not self.database_url

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key or self.data_dir / "signing.key"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        return parse(os.environ if env is None else env)


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


def _boolean(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _log_format(env: Mapping[str, str]) -> LogFormat | None:
    raw = env.get("LEDGER_LOG_FORMAT", "").strip()
    if not raw:
        return None
    if raw.lower() not in LOG_FORMATS:
        raise ConfigError(f"LEDGER_LOG_FORMAT={raw!r}: expected json or text")
    return cast(LogFormat, raw.lower())


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _from_file(env: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """The value of `name` or of the file its `_FILE` variant names, and how to name its source."""
    direct = _text(env, name)
    path = _text(env, f"{name}_FILE")
    if path is None:
        return direct, name
    source = f"{name}_FILE={path}"
    try:
        # Secret files usually end with a newline (an editor's, `echo`'s): it is not part of the value,
        # and surrounding blanks are stripped as they are from the variables themselves.
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    if not value:
        # An empty database URL would otherwise mean "embedded": a missing secret must not change mode.
        raise ConfigError(f"{source}: the file is empty")
    # `ledger serve` hands its resolved database URL to its workers as LEDGER_DATABASE_URL while the
    # _FILE variant is still set: the same value twice is no ambiguity, two different ones are.
    if direct is not None and direct != value:
        raise ConfigError(f"{name} and {name}_FILE are both set: set only one")
    return value, source


def _secret(env: Mapping[str, str], name: str) -> str | None:
    value, source = _from_file(env, name)
    if value is not None and len(value) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigError(f"{source}: must be at least {MIN_ADMIN_TOKEN_LENGTH} characters")
    return value


def _name(env: Mapping[str, str], name: str, value: str) -> str:
    # Origins and key names end up in signed notes: one printable line, no spaces or '+'.
    if any(c.isspace() or c == "+" for c in value) or not value.isprintable():
        raise ConfigError(f"{name}={value!r}: must be printable, without spaces or '+'")
    return value


def _verifier_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Verifier keys separated by blanks or commas (a key itself holds neither)."""
    found = []
    for text in env.get(name, "").replace(",", " ").split():
        try:
            found.append(Verifier.from_vkey(text).vkey)
        except NoteError as exc:
            raise ConfigError(f"{name}: {text!r} is not a verifier key ({exc})") from None
    return tuple(found)


def parse(env: Mapping[str, str]) -> Settings:
    origin = _name(env, "LEDGER_LOG_ORIGIN", _text(env, "LEDGER_LOG_ORIGIN") or DEFAULT_ORIGIN)
    key_name = _text(env, "LEDGER_KEY_NAME")
    database_url, source = _from_file(env, "LEDGER_DATABASE_URL")
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{source}: expected a postgresql:// URL")
    admin_token = _secret(env, "LEDGER_ADMIN_TOKEN")
    signing_key = _text(env, "LEDGER_SIGNING_KEY")
    if signing_key and not Path(signing_key).is_file():
        raise ConfigError(f"LEDGER_SIGNING_KEY={signing_key}: no such file")
    purposes = _text(env, "LEDGER_PURPOSES")
    registry = load_registry(Path(purposes)) if purposes else BUILT_IN
    data_dir = _text(env, "LEDGER_DATA_DIR")
    return Settings(
        database_url=database_url,
        data_dir=Path(data_dir).expanduser().absolute() if data_dir else Settings().data_dir,
        signing_key=Path(signing_key) if signing_key else None,
        trusted_keys=_verifier_keys(env, "LEDGER_TRUSTED_KEYS"),
        log_origin=origin,
        key_name=_name(env, "LEDGER_KEY_NAME", key_name) if key_name else None,
        purposes=Path(purposes) if purposes else None,
        registry=registry,
        admin_token=admin_token,
        consistency_wait_ms=_integer(env, "LEDGER_CONSISTENCY_WAIT_MS", 1000, 0, 60_000),
        max_staleness_ms=_integer(env, "LEDGER_MAX_STALENESS_MS", 2000, 1, 600_000),
        cache_size=_integer(env, "LEDGER_CACHE_SIZE", 100_000, 0, 100_000_000),
        workers=_integer(env, "LEDGER_WORKERS", 1, 1, 256),
        webhook_allow_private=_boolean(env, "LEDGER_WEBHOOK_ALLOW_PRIVATE"),
        tombstone_key=_secret(env, "LEDGER_TOMBSTONE_KEY"),
        log_format=_log_format(env),
        watch_retention=_integer(env, "LEDGER_WATCH_RETENTION", 100_000, 0, 1_000_000_000),
    )


def load_registry(path: Path, what: str = "LEDGER_PURPOSES=") -> Registry:
    """A registry file, or a ConfigError naming it (after `what`) and the offending field."""
    try:
        return parse_registry(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{what}{path}: {exc.strerror}") from None
    except msgspec.MsgspecError as exc:
        raise ConfigError(f"{what}{path}: {exc}") from None


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """LEDGER_* names that mean nothing here: most likely typos worth a warning."""
    return sorted(k for k in env if k.startswith("LEDGER_") and k not in KNOWN and not k.startswith("LEDGER_TEST_"))
