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
        }
    )
    assert not settings.embedded
    assert settings.signing_key_path == key
    assert settings.max_staleness_ms == 250
    assert settings.workers == 4
    assert settings.webhook_allow_private is True


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
