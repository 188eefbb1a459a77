"""What `run` says on its first line about how many tasks it keeps in flight."""

from __future__ import annotations

import pytest

from scheduler.runner import limit_text


@pytest.mark.parametrize(("concurrency", "account", "said"), [
    (None, 10, "account limit 10 in flight"),
    (None, None, "account limit ? in flight"),
    (3, 10, "at most 3 in flight: --concurrency; the account allows 10"),  # said "account
    (3, None, "at most 3 in flight: --concurrency"),                       # limit 3" before
    (10, 10, "account limit 10 in flight"),
    (8, 4, "account limit 4 in flight; --concurrency 8 is above it"),
])
def test_the_limit_in_effect_is_named_by_where_it_comes_from(
        concurrency: int | None, account: int | None, said: str) -> None:
    assert limit_text(concurrency, account) == said
