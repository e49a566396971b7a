"""The choices between aligned places: the same whichever catalogue or shard makes them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tunetrace.alignment import ChromaAlignment
from tunetrace.places import Place, places_to_screen, verification_order
from tunetrace.screening import Screening
from tunetrace.types import Candidate


def _place(rank: int, key: int, chroma: float, value: float | None) -> Place:
    candidate = Candidate(reference_key=key, tempo_ratio=1.0, offset_frames=0.0, votes=1.0)
    alignment = ChromaAlignment(candidate, 1.0, 0.0, np.array([chroma - 0.1, chroma, 0.0]))
    screening = None if value is None else Screening(value, 0.0, 0.0)
    return Place(rank, None, alignment, screening)


@pytest.mark.parametrize("seed", range(30))
def test_shards_screen_every_place_the_whole_catalogues_choice_picks(seed: int) -> None:
    """Places of one query spread over shards, with chroma fits and screening values that
    tie: the selection made at the gather from all shards' places, in any order, is one
    catalogue's (ties by rank), each of its places was among those its own shard screened,
    and the verification order is one catalogue's."""
    rng = random.Random(seed)
    count = rng.randint(0, 40)
    screen_top = rng.choice([None, 1, 3, 6, 10])
    places = [
        _place(rank, rng.randrange(8), rng.choice([0.5, 0.6, 0.7]), rng.choice([0.2, 0.4, 0.9]))
        for rank in range(count)
    ]
    shard_of = {place.rank: rng.randrange(4) for place in places}

    gathered = places_to_screen(rng.sample(places, count), screen_top)

    by_fit = sorted(places, key=lambda p: (-p.alignment.chroma_similarity, p.rank))
    expected = places if screen_top is None else by_fit[:screen_top]
    assert [p.rank for p in gathered] == [p.rank for p in expected]
    for shard in range(4):
        own = [p for p in places if shard_of[p.rank] == shard]
        screened_there = {p.rank for p in places_to_screen(own, screen_top)}
        assert {p.rank for p in gathered if shard_of[p.rank] == shard} <= screened_there
    ordered = verification_order(gathered)
    position = {p.rank: n for n, p in enumerate(gathered)}
    assert [p.rank for p in ordered] == [
        p.rank for p in sorted(gathered, key=lambda p: (-p.value, position[p.rank]))
    ]


def test_a_place_takes_another_key_and_keeps_everything_else() -> None:
    place = _place(4, key=7, chroma=0.6, value=0.9)
    moved = place.with_key(123)
    assert moved.reference_key == 123 and place.reference_key == 7
    assert (moved.rank, moved.window, moved.value) == (4, None, 0.9)
    assert _place(0, 1, 0.6, None).value == float("-inf")  # not screened yet
