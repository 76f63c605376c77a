"""Transcript text for benchmarks: varied like speech, so compression sees realistic input.

Every session's turns are different sentences drawn from a fixed vocabulary of 2,000
pseudo-words (seeded, so runs compare): the broker's compression shrinks such JSON about as
much as it shrinks real call transcripts, not 40-fold as it would one repeated sentence.
"""

from __future__ import annotations

import random

VOCABULARY_SIZE = 2000
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwyz" for v in "aeiou"] + ["the", "and", "ing"]


def vocabulary(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = {"".join(rng.choices(SYLLABLES, k=rng.choice((1, 1, 2, 2, 3)))) for _ in range(4000)}
    return sorted(words)[:VOCABULARY_SIZE]


class Sentences:
    """A seeded source of sentences of about `chars` characters."""

    def __init__(self, seed: int = 1) -> None:
        self._rng = random.Random(seed)
        self._words = vocabulary()

    def sentence(self, chars: int = 60) -> str:
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append(self._rng.choice(self._words))
        return " ".join(words).capitalize() + "."
