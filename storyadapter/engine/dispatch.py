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


class BatchQueues:
    def __init__(self, batches: list[list[int]], actors: int):
        if actors < 1:
            raise ValueError("need at least one actor")
        self._shares = [deque(batches[a::actors]) for a in range(actors)]
        self._returned: deque[list[int]] = deque()
        self.taken_from_others = 0  # batches rendered outside their owner's share, for the log

    def next_for(self, actor: int) -> list[int] | None:
        if self._returned:
            return self._returned.popleft()
        own = self._shares[actor]
        if own:
            return own.popleft()
        longest = max(self._shares, key=len)
        if not longest:
            return None
        self.taken_from_others += 1
        return longest.pop()

    def put_back(self, batch: list[int]) -> None:
        self._returned.append(batch)

    def remaining(self) -> int:
        return len(self._returned) + sum(len(s) for s in self._shares)
