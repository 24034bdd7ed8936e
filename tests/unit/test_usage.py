"""Help text follows the settings: every setting the ledger knows has a line of meaning."""

from ledger.settings import KNOWN
from ledger.usage import MEANINGS, environment, setting_names


def test_every_setting_has_a_meaning_for_help() -> None:
    missing = [name for name in setting_names() if name not in MEANINGS]
    assert not missing, f"add a line for each to ledger.usage.MEANINGS: {missing}"


def test_every_known_setting_is_listed_and_unknown_names_are_not() -> None:
    listed = environment([*setting_names(), "LEDGER_NOT_A_SETTING"])
    for name in KNOWN:
        assert name in listed, name
    assert "LEDGER_NOT_A_SETTING" not in listed
