"""The mirror's cache: an answer or event built earlier never overwrites a newer one, whichever
arrives first; erasures, registry publishes and resyncs void what they must."""

import threading

from ledger.client.cache import DecisionCache, Fetch, Key
from ledger.client.decision import Decision, unpack
from ledger.client.events import Change, Erasure, Heartbeat, RegistryPublished, Resync, Unknown

K = Key("dev-1", "pixverse_sharing")
T = "2026-11-28T10:00:00.000000Z"


def grant(index: int, key: Key = K) -> Decision:
    return Decision(key.device_id, key.purpose, True, "granted", 1, T, None, index)


def withdrawal(index: int, key: Key = K) -> Decision:
    return Decision(key.device_id, key.purpose, False, "withdrawn", 1, T, None, index)


def erased(key: Key = K) -> Decision:
    return Decision(key.device_id, key.purpose, False, "erased", None, None, None, None)


def change(entry: int, decision: Decision) -> Change:
    return Change(decision.device_id, decision.purpose, entry, decision)


def held(cache: DecisionCache, key: Key = K) -> Decision | None:
    value = cache.decisions.get(key.purpose, {}).get(key.device_id)
    return None if value is None else unpack(value, key.device_id, key.purpose, now=0)


def filled(position: int, *answers: Decision, answered_at: int | None = None) -> DecisionCache:
    cache = DecisionCache(100)
    cache.apply(Heartbeat(position), position)
    fetch = cache.begin([Key(a.device_id, a.purpose) for a in answers])
    assert fetch is not None
    cache.finish(fetch, list(answers), answered_at)
    return cache


def in_flight(position: int, *keys: Key) -> tuple[DecisionCache, Fetch]:
    """A cache at `position` with a fetch of `keys` (default: K) sent and not answered yet."""
    cache = DecisionCache(100)
    cache.apply(Heartbeat(position), position)
    fetch = cache.begin(list(keys or [K]))
    assert fetch is not None
    return cache, fetch


def test_no_fetch_before_the_stream_has_a_position() -> None:
    assert DecisionCache(10).begin([K]) is None


def test_a_later_change_replaces_the_answer_and_an_earlier_one_does_not() -> None:
    cache = filled(10, grant(7))
    cache.apply(change(12, withdrawal(12)), 13)
    assert held(cache) == withdrawal(12)
    cache.apply(change(11, grant(7)), 14)  # built before the withdrawal, delivered after it
    assert held(cache) == withdrawal(12)


def test_an_event_built_before_a_fresher_answer_does_not_overwrite_it() -> None:
    """The fetch was answered at log size 20 (withdrawn at 15); an event for the grant at 12,
    built from the state at 12, arrives afterwards."""
    cache = filled(10, withdrawal(15), answered_at=20)
    cache.apply(change(12, grant(12)), 13)
    assert held(cache) == withdrawal(15)


def test_a_change_during_the_fetch_wins_over_an_older_answer() -> None:
    cache, fetch = in_flight(10)
    cache.apply(change(10, withdrawal(10)), 11)  # the key is not held yet: only noted in the fetch
    assert held(cache) is None
    [answer] = cache.finish(fetch, [grant(3)], 10)  # answered from before the withdrawal
    assert answer == withdrawal(10)
    assert held(cache) == withdrawal(10)


def test_an_answer_newer_than_a_change_during_the_fetch_is_kept() -> None:
    cache, fetch = in_flight(10)
    cache.apply(change(10, grant(10)), 11)
    [answer] = cache.finish(fetch, [withdrawal(11)], 12)
    assert answer == withdrawal(11) == held(cache)


def test_an_erasure_during_the_fetch_voids_an_answer_from_before_it() -> None:
    cache, fetch = in_flight(10)
    cache.apply(Erasure(K.device_id, 10), 11)
    assert cache.finish(fetch, [grant(5)], 10) == [None]
    assert held(cache) is None


def test_an_erased_answer_is_not_overwritten_by_a_change_from_before_the_erasure() -> None:
    cache = filled(10, erased(), answered_at=16)  # erased at 15
    cache.apply(change(12, grant(12)), 13)  # the grant at 12, its event built before the erasure
    assert held(cache) == erased()
    cache.apply(change(20, grant(20)), 21)  # a new grant after the erasure
    assert held(cache) == grant(20)


def test_an_erasure_drops_every_purpose_of_the_device_only() -> None:
    other_purpose, other_device = Key("dev-1", "telemetry"), Key("dev-2", "pixverse_sharing")
    cache = filled(10, grant(1), grant(2, other_purpose), grant(3, other_device))
    cache.apply(Erasure("dev-1", 10), 11)
    assert held(cache) is None
    assert held(cache, other_purpose) is None
    assert held(cache, other_device) == grant(3, other_device)


def test_a_change_to_erased_drops_the_device() -> None:
    cache = filled(10, grant(1))
    cache.apply(change(10, erased()), 11)
    assert held(cache) is None


def test_registry_resync_unknown_and_anonymous_erasure_events_drop_everything_and_void_fetches() -> None:
    for event in (RegistryPublished(10), Resync(10, "behind"), Unknown("something-new"), Erasure(None, 10)):
        cache = filled(10, grant(1))
        fetch = cache.begin([Key("dev-2", "telemetry")])
        assert fetch is not None
        assert held(cache) == grant(1)
        cache.apply(event, 11)
        assert held(cache) is None
        assert cache.finish(fetch, [grant(2, Key("dev-2", "telemetry"))], 11) == [None]
        assert len(cache) == 0


def test_changes_for_keys_not_held_are_not_mirrored() -> None:
    cache = filled(10, grant(1))
    cache.apply(change(10, grant(10, Key("dev-9", "pixverse_sharing"))), 11)
    assert len(cache) == 1


def test_a_position_that_goes_back_drops_everything() -> None:
    cache = filled(10, grant(1))
    cache.apply(Heartbeat(5), 5)
    assert len(cache) == 0
    assert cache.position == 5


def test_the_cache_stays_within_its_capacity() -> None:
    cache = DecisionCache(64)
    cache.apply(Heartbeat(1), 1)
    for n in range(1000):
        key = Key(f"dev-{n}", "telemetry")
        fetch = cache.begin([key])
        assert fetch is not None
        cache.finish(fetch, [grant(n, key)], 1)
        assert len(cache) <= 64
    assert held(cache, Key("dev-999", "telemetry")) == grant(999, Key("dev-999", "telemetry"))


def test_wait_for_returns_when_the_stream_passes_the_position() -> None:
    cache = DecisionCache(10)
    cache.apply(Heartbeat(3), 3)
    assert cache.wait_for(3, 0)
    assert not cache.wait_for(4, 0.01)
    waiter = threading.Thread(target=lambda: cache.apply(Heartbeat(4), 4))
    waiter.start()
    assert cache.wait_for(4, 5)
    waiter.join()
