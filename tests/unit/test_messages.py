"""How the dispatcher splits leased rows into Celery messages: one batch per message, at
most `size` ids each, spread over the consumers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.dispatcher import by_batch, chunks


def test_rows_of_two_batches_never_share_a_message() -> None:
    leased = {1: "bA", 2: "bB", 3: "bA", 4: "bB", 5: "bA"}
    assert by_batch(leased) == {"bA": [1, 3, 5], "bB": [2, 4]}


@given(st.dictionaries(st.integers(1, 10_000), st.sampled_from(["b1", "b2", "b3"]),
                       max_size=200),
       st.integers(1, 32), st.integers(1, 8))
def test_every_leased_id_is_sent_once_in_a_message_of_its_own_batch(
        leased: dict[int, str], size: int, spread: int) -> None:
    sent: list[int] = []
    for batch, ids in by_batch(leased).items():
        for part in chunks(ids, size, spread):
            assert 0 < len(part) <= size
            assert {leased[i] for i in part} == {batch}
            sent += part
    assert sorted(sent) == sorted(leased)
