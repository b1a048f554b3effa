"""Batch hand-out: each actor's own share first, then the back of the longest share left, every batch once."""

from __future__ import annotations

import random

import pytest

from storyadapter.engine.dispatch import BatchQueues
from storyadapter.story.schedule import batches


def test_actors_start_on_their_round_robin_share():
    queues = BatchQueues(batches(10, 2), actors=2)
    assert queues.next_for(0) == [0, 1]
    assert queues.next_for(1) == [2, 3]
    assert queues.next_for(0) == [4, 5]
    assert queues.taken_from_others == 0


def test_an_idle_actor_takes_from_the_back_of_the_longest_share():
    queues = BatchQueues(batches(12, 1), actors=3)  # shares: [0,3,6,9] [1,4,7,10] [2,5,8,11]
    for _ in range(4):
        queues.next_for(0)
    queues.next_for(2)  # actor 2 has three left, actor 1 four
    assert queues.next_for(0) == [10]
    assert queues.next_for(0) == [7]  # a tie (three each): the lower actor's share
    assert queues.next_for(0) == [11]
    assert queues.taken_from_others == 3
    assert queues.next_for(1) == [1]  # the owner still starts from the front of what is left


@pytest.mark.parametrize("actors", [1, 2, 3, 5])
def test_every_batch_is_handed_out_exactly_once_whatever_the_order_of_requests(actors):
    groups = batches(23, 3)
    rng = random.Random(actors)
    queues = BatchQueues(groups, actors)
    handed = []
    while queues.remaining():
        batch = queues.next_for(rng.randrange(actors))
        assert batch is not None
        handed.append(batch)
    assert all(queues.next_for(a) is None for a in range(actors))
    assert sorted(handed) == groups


def test_a_fast_actor_ends_up_with_more_batches():
    queues = BatchQueues(batches(20, 1), actors=2)
    done = {0: 0, 1: 0}
    while queues.remaining():
        for actor, speed in ((0, 3), (1, 1)):  # actor 0 finishes three batches for each of actor 1's
            for _ in range(speed):
                if queues.next_for(actor) is not None:
                    done[actor] += 1
    assert done[0] == 15 and done[1] == 5
    assert queues.taken_from_others == 5


def test_no_actors_is_an_error():
    with pytest.raises(ValueError):
        BatchQueues([[0]], actors=0)
