"""What `database:` says for each form of LEDGER_DATABASE_URL: where, never who or with what secret."""

from pathlib import Path

import pytest

from ledger.cli import database_description, database_label
from ledger.errors import ConfigError
from ledger.settings import Settings


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://ledger:s3cret@db.example:6432/consents", "postgresql://db.example:6432/consents"),
        ("postgres://ledger@db.example/consents", "postgresql://db.example:5432/consents"),
        ("postgresql://db.example/consents?sslmode=require&password=s3cret", "postgresql://db.example:5432/consents"),
        ("postgresql://u:s3cret@[::1]:5433/consents", "postgresql://[::1]:5433/consents"),
        ("postgresql://u:s3cret@h1:5432,h2:5433/consents", "postgresql://h1:5432,h2:5433/consents"),
        (
            "postgresql://u:s3cret@/consents?host=/run/postgresql",
            "postgresql:///consents?host=/run/postgresql&port=5432",
        ),
        ("postgresql://u:s3cret@db.example", "postgresql://db.example:5432/"),
    ],
)
def test_a_database_url_is_named_without_credentials(url: str, said: str) -> None:
    assert database_description(Settings(database_url=url)) == said
    assert "s3cret" not in database_label(Settings(database_url=url))


def test_the_embedded_database_is_named_by_its_data_directory() -> None:
    assert database_description(Settings(data_dir=Path("/srv/ledger"))) == "embedded in /srv/ledger"


def test_a_url_that_does_not_parse_is_a_setting_error() -> None:
    with pytest.raises(ConfigError, match="LEDGER_DATABASE_URL: not a valid URL"):
        database_description(Settings(database_url="postgresql://u:s3cret@db.example:port/x"))
