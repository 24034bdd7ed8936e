"""The projection switches registries at a registry entry's index, and never back."""

import msgspec

from ledger.core.batch import Committed
from ledger.core.purposes import BUILT_IN, Registry
from ledger.core.registry import registry_entry, registry_entry_bytes
from ledger.projection import Projection

AT = "2026-11-29T10:00:00.000000Z"


def raised(version: int) -> Registry:
    purposes = dict(BUILT_IN.purposes)
    purposes["telemetry"] = msgspec.structs.replace(purposes["telemetry"], min_policy_version=version)
    return Registry(purposes=purposes)


def projection() -> Projection:
    # Storage is not touched by the paths under test.
    return Projection(None, None, "postgresql://unused", cache_size=10, max_staleness_ms=1000)  # type: ignore[arg-type]


def test_own_publish_tail_and_restart_paths_switch_at_the_index_and_never_back() -> None:
    view = projection()
    assert view.registry == BUILT_IN
    assert view.registry_index == -1
    second = registry_entry("00000000-0000-0000-0000-000000000002", 5, AT, raised(2))
    view.apply_committed(Committed(5, 6, [], second))
    assert (view.registry_index, view.registry.purposes["telemetry"].min_policy_version) == (5, 2)
    # The tailer reaching an older registry entry afterwards changes nothing.
    first = registry_entry("00000000-0000-0000-0000-000000000001", 0, AT, raised(1))
    view._apply(registry_entry_bytes(first), None)
    assert view.registry_index == 5
    assert view.registry.purposes["telemetry"].min_policy_version == 2
    # A later one does.
    third = registry_entry("00000000-0000-0000-0000-000000000003", 9, AT, raised(3))
    view._apply(registry_entry_bytes(third), None)
    assert (view.registry_index, view.registry_recorded_at) == (9, AT)
    assert view.registry.purposes["telemetry"].min_policy_version == 3
