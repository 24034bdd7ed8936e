"""What `ledger ... --help` says beyond the arguments: each option's default, and the LEDGER_*
settings a command reads with their defaults.

The names come from `ledger.settings.KNOWN` and the plain defaults from the `Settings` fields, so
that help follows the settings; only a line of meaning per variable is written here (and the
default where it is not a plain value).
"""

import argparse
import textwrap
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ledger.settings import FILE_VARIANTS, KNOWN, Settings

__all__ = ["EVERY_COMMAND", "MEANINGS", "HelpFormatter", "environment", "setting_names"]

# Every command reads these (the logging set up before any command runs).
EVERY_COMMAND = ("LEDGER_LOG_FORMAT",)

# name: (meaning, default where the Settings field's own default would not say it)
MEANINGS: dict[str, tuple[str, str | None]] = {
    "LEDGER_DATABASE_URL": (
        "the PostgreSQL database, a postgresql:// URL",
        "unset: the embedded PostgreSQL in LEDGER_DATA_DIR",
    ),
    "LEDGER_DATA_DIR": ("holds the embedded PostgreSQL (postgres/) and the generated signing key", None),
    "LEDGER_SIGNING_KEY": (
        "the Ed25519 key file that signs checkpoints (`ledger keygen` writes one)",
        "LEDGER_DATA_DIR/signing.key, generated on first start",
    ),
    "LEDGER_TRUSTED_KEYS": (
        "verifier keys of the log's other signing keys, the earlier ones after a rotation (blanks or commas between)",
        "none",
    ),
    "LEDGER_LOG_ORIGIN": ("the log's origin, the first line of every checkpoint", None),
    "LEDGER_KEY_NAME": ("the signing key's name; must be the key file's", "the log origin"),
    "LEDGER_PURPOSES": ("a TOML purpose registry that seeds a log that has none", "the built-in registry"),
    "LEDGER_ADMIN_TOKEN": (
        "bootstraps an admin-scope token (32 characters or more); a new value revokes the previous one at start",
        "unset: none",
    ),
    "LEDGER_CONSISTENCY_WAIT_MS": ("how long a check with consistency= waits before answering 503", None),
    "LEDGER_MAX_STALENESS_MS": ("further behind the database than this, checks fail closed (503)", None),
    "LEDGER_CACHE_SIZE": ("entries in each of a process's two decision caches (0: no cache)", None),
    "LEDGER_WORKERS": ("server processes (--workers overrides it)", None),
    "LEDGER_WEBHOOK_ALLOW_PRIVATE": (
        "true lets webhooks use http and private or loopback addresses (tests, closed networks)",
        None,
    ),
    "LEDGER_TOMBSTONE_KEY": (
        "key of the keyed hash kept for an erased device (32 characters or more)",
        "derived from the signing key",
    ),
    "LEDGER_LOG_FORMAT": ("log lines as json or text", "json off a terminal, text on one"),
    "LEDGER_WATCH_RETENTION": ("log entries a GET /v1/watch resume point may be behind before a resync", None),
}

WIDTH = 79


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default (when it has one); the epilog is kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def setting_names() -> list[str]:
    """Every setting, in the order Settings declares them (the `_FILE` variants go with theirs)."""
    declared = [f"LEDGER_{f.name.upper()}" for f in msgspec.structs.fields(Settings)]
    rest = sorted(KNOWN - set(declared) - {f"{name}_FILE" for name in FILE_VARIANTS})
    return [name for name in declared if name in KNOWN] + rest


def _default(name: str) -> str:
    meaning = MEANINGS.get(name)
    if meaning is not None and meaning[1] is not None:
        return meaning[1]
    defaults = {f"LEDGER_{f.name.upper()}": f.default for f in msgspec.structs.fields(Settings)}
    value = defaults.get(name)
    if value is None or value is msgspec.NODEFAULT:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path | int | str):
        return str(value)
    return "unset"


def environment(names: Iterable[str]) -> str:
    """An epilog listing the settings among `names` that the ledger knows, with their defaults."""
    known = [name for name in dict.fromkeys([*names, *EVERY_COMMAND]) if name in KNOWN]
    lines = [] if "LEDGER_DATABASE_URL" in names else ["This command uses no database."]
    if not known:
        return "\n".join([*lines, "environment: it reads no LEDGER_* setting."])
    lines.append("environment (the LEDGER_* settings this command reads):")
    for name in known:
        alternative = f", or {name}_FILE naming a file that holds it" if name in FILE_VARIANTS else ""
        lines.append(f"  {name}{alternative}")
        meaning = MEANINGS.get(name, ("", None))[0]
        text = f"{meaning} (default: {_default(name)})" if meaning else f"(default: {_default(name)})"
        lines.extend(
            textwrap.wrap(
                text,
                WIDTH,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)
