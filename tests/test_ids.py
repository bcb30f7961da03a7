"""Generation ids: OpenRouter's shape, unique, and in time order within the second, so the
indexes keyed by them grow at their end (issue 7, the ledger writer)."""

from __future__ import annotations

import random
import re

from farebox.ids import POOL_BYTES, Ids

SHAPE = re.compile(r"gen-(\d+)-[A-Za-z0-9]{20}")


def test_a_generation_id_has_openrouters_shape_and_its_second() -> None:
    gid = Ids().generation_id(1_700_000_123_456)
    match = SHAPE.fullmatch(gid)
    assert match is not None and match.group(1) == "1700000123"


def test_ids_made_later_sort_later_across_milliseconds_and_seconds() -> None:
    ids = Ids()
    made = [ids.generation_id(ms) for ms in range(1_700_000_000_000, 1_700_000_002_000)]  # every ms of 2 s
    assert sorted(made) == made
    assert len(set(made)) == len(made)


def test_ids_made_in_one_millisecond_differ() -> None:
    count = 10 * POOL_BYTES // 18   # enough ids to refill the random pool ten times
    ids = Ids()
    made = {ids.generation_id(1_700_000_000_000) for _ in range(count)}
    assert len(made) == count


def test_a_seeded_source_makes_the_same_ids() -> None:
    a, b = Ids(random.Random(7)), Ids(random.Random(7))
    assert [a.generation_id(5_000) for _ in range(3)] == [b.generation_id(5_000) for _ in range(3)]
