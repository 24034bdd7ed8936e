"""The watch hub's ring: the latest events by a sequence number that only grows."""

from ledger.watch import Event, Ring


def test_a_full_ring_pushes_out_its_oldest_event_and_keeps_sequence_numbers() -> None:
    ring = Ring(3)
    assert [ring.push(Event(i * 2, b"%d" % i)) for i in range(3)] == [None, None, None]
    assert ring.push(Event(6, b"3")) == Event(0, b"0")
    assert (ring.first, ring.next) == (1, 4)
    assert [ring[seq].index for seq in range(ring.first, ring.next)] == [2, 4, 6]


def test_seek_finds_the_first_event_at_or_after_a_log_index_across_the_wrap() -> None:
    ring = Ring(4)
    for index in (1, 3, 4, 8, 9, 15):  # entries 2, 5-7, 10-14 made no event
        ring.push(Event(index, b""))
    assert (ring.first, ring.next) == (2, 6)
    assert [ring.seek(index) for index in (0, 4, 5, 8, 9, 10, 15, 16)] == [2, 2, 3, 3, 4, 5, 5, 6]
    assert Ring(2).seek(7) == 0


def test_a_cleared_ring_holds_nothing_and_numbers_on() -> None:
    ring = Ring(2)
    for index in (3, 5, 8):
        ring.push(Event(index, b""))
    ring.clear()
    assert (ring.first, ring.next) == (3, 3)
    assert ring.seek(0) == 3
    ring.push(Event(9, b"9"))
    assert ring[3] == Event(9, b"9")
