"""Configuration: safe defaults, and a wrong value stops the service with one line naming it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.errors import ConfigError
from ledger.settings import DEFAULT_ORIGIN, parse, unknown_variables


def test_defaults_are_safe() -> None:
    settings = parse({})
    assert settings.embedded
    assert settings.database_url is None
    assert settings.log_origin == DEFAULT_ORIGIN
    assert settings.admin_token is None
    assert settings.webhook_allow_private is False
    assert settings.workers == 1
    assert settings.signing_key_path == settings.data_dir / "signing.key"
    assert settings.watch_retention == 100_000


def test_values_are_read(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("x")
    settings = parse(
        {
            "LEDGER_DATABASE_URL": "postgresql://u@db/ledger",
            "LEDGER_DATA_DIR": str(tmp_path),
            "LEDGER_SIGNING_KEY": str(key),
            "LEDGER_LOG_ORIGIN": "consent.example/log",
            "LEDGER_MAX_STALENESS_MS": "250",
            "LEDGER_WORKERS": "4",
            "LEDGER_WEBHOOK_ALLOW_PRIVATE": "true",
            "LEDGER_WATCH_RETENTION": "0",
        }
    )
    assert not settings.embedded
    assert settings.signing_key_path == key
    assert settings.max_staleness_ms == 250
    assert settings.workers == 4
    assert settings.webhook_allow_private is True
    assert settings.watch_retention == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEDGER_DATABASE_URL", "mysql://nope"),
        ("LEDGER_SIGNING_KEY", "/no/such/key"),
        ("LEDGER_LOG_ORIGIN", "has space"),
        ("LEDGER_KEY_NAME", "a+b"),
        ("LEDGER_PURPOSES", "/no/such/purposes.toml"),
        ("LEDGER_ADMIN_TOKEN", "short"),
        ("LEDGER_CONSISTENCY_WAIT_MS", "soon"),
        ("LEDGER_MAX_STALENESS_MS", "0"),
        ("LEDGER_CACHE_SIZE", "-1"),
        ("LEDGER_WORKERS", "1000"),
        ("LEDGER_WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ("LEDGER_WATCH_RETENTION", "-1"),
        ("LEDGER_WATCH_RETENTION", "lots"),
    ],
)
def test_a_wrong_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        parse({name: value})


def test_unknown_ledger_variables_are_reported() -> None:
    env = {"LEDGER_DATABSE_URL": "x", "LEDGER_TEST_DATABASE_URL": "y", "LEDGER_WORKERS": "1", "HOME": "/"}
    assert unknown_variables(env) == ["LEDGER_DATABSE_URL"]


def test_the_cli_stops_with_one_clear_line() -> None:
    env = {**os.environ, "LEDGER_WORKERS": "many"}
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "ledger: error: LEDGER_WORKERS='many': expected a whole number"


def test_a_bad_purposes_file_names_the_variable(tmp_path: Path) -> None:
    bad = tmp_path / "purposes.toml"
    bad.write_text('[purposes.telemetry]\ntitle = "x"\n')
    with pytest.raises(ConfigError, match=r"LEDGER_PURPOSES=.*purposes\.toml: Object missing required field"):
        parse({"LEDGER_PURPOSES": str(bad)})
    good = tmp_path / "good.toml"
    good.write_text('[purposes.ads]\ntitle = "Ads"\ndescription = "d"\nrecipients = []\ndata_categories = []\n')
    assert list(parse({"LEDGER_PURPOSES": str(good)}).registry.purposes) == ["ads"]


SECRET_VALUES = {
    "LEDGER_DATABASE_URL": "postgresql://app:s3cret@ledger-db-rw.consent-ledger:5432/app",
    "LEDGER_ADMIN_TOKEN": "a" * 40,
    "LEDGER_TOMBSTONE_KEY": "t" * 40,
}
ATTRIBUTES = {
    "LEDGER_DATABASE_URL": "database_url",
    "LEDGER_ADMIN_TOKEN": "admin_token",
    "LEDGER_TOMBSTONE_KEY": "tombstone_key",
}


@pytest.mark.parametrize("name", sorted(SECRET_VALUES))
def test_a_secret_is_read_from_its_file_without_the_trailing_newline(name: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET_VALUES[name] + "\n")
    settings = parse({f"{name}_FILE": str(secret)})
    assert getattr(settings, ATTRIBUTES[name]) == SECRET_VALUES[name]
    assert unknown_variables({f"{name}_FILE": str(secret)}) == []


@pytest.mark.parametrize("name", sorted(SECRET_VALUES))
def test_a_secret_set_both_ways_names_both(name: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET_VALUES[name])
    other = SECRET_VALUES[name].replace("a", "b").replace("t", "u").replace("s3cret", "other")
    with pytest.raises(ConfigError) as caught:
        parse({name: other, f"{name}_FILE": str(secret)})
    assert str(caught.value) == f"{name} and {name}_FILE are both set: set only one"


def test_the_same_value_both_ways_is_accepted(tmp_path: Path) -> None:
    # `ledger serve` hands the resolved URL to its workers as LEDGER_DATABASE_URL; the _FILE stays set.
    secret = tmp_path / "uri"
    secret.write_text(SECRET_VALUES["LEDGER_DATABASE_URL"] + "\n")
    env = {"LEDGER_DATABASE_URL": SECRET_VALUES["LEDGER_DATABASE_URL"], "LEDGER_DATABASE_URL_FILE": str(secret)}
    assert parse(env).database_url == SECRET_VALUES["LEDGER_DATABASE_URL"]


@pytest.mark.parametrize("name", sorted(SECRET_VALUES))
def test_an_unreadable_secret_file_is_one_line_naming_variable_and_path(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    with pytest.raises(ConfigError) as caught:
        parse({f"{name}_FILE": str(missing)})
    assert str(caught.value) == f"{name}_FILE={missing}: No such file or directory"
    with pytest.raises(ConfigError) as caught:
        parse({f"{name}_FILE": str(tmp_path)})
    assert str(caught.value) == f"{name}_FILE={tmp_path}: Is a directory"


@pytest.mark.parametrize("name", sorted(SECRET_VALUES))
def test_an_empty_secret_file_is_refused(name: str, tmp_path: Path) -> None:
    # An empty database URL would silently mean "embedded"; an empty token is no token.
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=f"^{name}_FILE=.*: the file is empty$"):
        parse({f"{name}_FILE": str(empty)})


def test_a_wrong_value_in_a_secret_file_names_the_file(tmp_path: Path) -> None:
    url = tmp_path / "url"
    url.write_text("mysql://nope\n")
    with pytest.raises(ConfigError, match=f"^LEDGER_DATABASE_URL_FILE={url}: expected a postgresql:// URL$"):
        parse({"LEDGER_DATABASE_URL_FILE": str(url)})
    short = tmp_path / "token"
    short.write_text("short\n")
    with pytest.raises(ConfigError, match=f"^LEDGER_ADMIN_TOKEN_FILE={short}: must be at least 32 characters$"):
        parse({"LEDGER_ADMIN_TOKEN_FILE": str(short)})


def test_the_cli_reports_an_unreadable_secret_file_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "LEDGER_ADMIN_TOKEN_FILE": str(tmp_path / "gone")}
    env.pop("LEDGER_ADMIN_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    *before, last = result.stderr.strip().splitlines()
    assert not [line for line in before if "LEDGER_ADMIN_TOKEN_FILE" in line]  # not reported as a typo
    assert last == f"ledger: error: LEDGER_ADMIN_TOKEN_FILE={tmp_path / 'gone'}: No such file or directory"
