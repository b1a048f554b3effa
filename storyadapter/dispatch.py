"""Which actor renders which batch next: own share first, then help the actor furthest behind.

Batches themselves are fixed by frame index (schedule.batches), so moving one to another actor never
changes its pixels; only the end-of-iteration wait changes. Each actor starts on its round-robin share,
the frames whose text it has already encoded. An actor that runs out takes from the back of the
longest remaining share, so one slowed actor (a busy node, a throttled GPU) no longer holds every
other actor at the iteration barrier.
"""

from __future__ import annotations

from collections import deque


class BatchQueues:
    def __init__(self, batches: list[list[int]], actors: int):
        if actors < 1:
            raise ValueError("need at least one actor")
        self._shares = [deque(batches[a::actors]) for a in range(actors)]
        self.taken_from_others = 0  # batches rendered outside their owner's share, for the log

    def next_for(self, actor: int) -> list[int] | None:
        own = self._shares[actor]
        if own:
            return own.popleft()
        longest = max(self._shares, key=len)
        if not longest:
            return None
        self.taken_from_others += 1
        return longest.pop()

    def remaining(self) -> int:
        return sum(len(s) for s in self._shares)
