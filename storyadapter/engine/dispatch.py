"""Which actor renders which batch next: returned batches first, then own share, then help the one furthest behind.

Batches themselves are fixed by frame index (schedule.batches), so moving one to another actor never
changes its pixels; only the end-of-iteration wait changes. Each actor starts on its round-robin share,
the frames whose text it has already encoded. An actor that runs out takes from the back of the
longest remaining share, so one slowed actor (a busy node, a throttled GPU) no longer holds every
other actor at the iteration barrier. A batch whose actor died or missed its deadline comes back
(`put_back`) and goes to the next actor that asks, before anything else.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence


class BatchQueues:
    def __init__(self, batches: list[list[int]], actors: int | Sequence[int]):
        """`actors`: how many (their indices 0..n-1), or the indices of the actors that own a share. An actor
        that joins later owns none: it starts by helping the one furthest behind."""
        owners = range(actors) if isinstance(actors, int) else list(actors)
        if len(owners) < 1:
            raise ValueError("need at least one actor")
        self._shares = {a: deque(batches[i::len(owners)]) for i, a in enumerate(owners)}
        self._returned: deque[list[int]] = deque()
        self.taken_from_others = 0  # batches rendered outside their owner's share, for the log

    def next_for(self, actor: int) -> list[int] | None:
        if self._returned:
            return self._returned.popleft()
        own = self._shares.get(actor)
        if own:
            return own.popleft()
        longest = max(self._shares.values(), key=len)
        if not longest:
            return None
        self.taken_from_others += 1
        return longest.pop()

    def put_back(self, batch: list[int]) -> None:
        self._returned.append(batch)

    def remaining(self) -> int:
        return len(self._returned) + sum(len(s) for s in self._shares.values())
