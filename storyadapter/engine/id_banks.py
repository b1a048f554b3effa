"""The ID banks of a consistent-self-attention pass, as the driver keeps them.

Each character's write phase runs on one actor and returns two objects: a small IdentityDone that the driver
waits on, and the packed bank, which stays in the object store of the node that wrote it, owned by the driver.
The driver keeps the first bank written for each character (a late copy of a write phase brings only its
frames), gives every batch of the read phase the banks' refs, and drops them with the iteration, so the
store frees them. The read phase maps every bank a frame names at once, so they must fit one node's store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityWork:
    """A queue item of a CSA pass: one character's write phase (its identity frames as one batch)."""

    character: str


@dataclass(frozen=True)
class IdentityDone:
    """What the driver waits on for a write phase: its shown frames and the size of the bank left in the store."""

    batch: object  # BatchResult
    bank_bytes: int
    identity_frames: int  # rendered, story frames and synthesized ones


class IdBanks:
    """One iteration's banks: sent write phases, and each character's first written bank."""

    def __init__(self):
        self.refs: dict = {}  # character -> ObjectRef of its packed bank: what every read-phase batch carries
        self._sent: dict = {}  # write_identity result ref -> (character, its bank's ref)
        self._bytes: dict = {}  # character -> its bank's size

    def send(self, actor, iteration: int, character: str):
        """Start `character`'s write phase on `actor`; returns the ref to wait on."""
        result_ref, bank_ref = actor.write_identity.remote(iteration, character)
        self._sent[result_ref] = (character, bank_ref)
        return result_ref

    def written(self, result_ref, done: IdentityDone, actor: int):
        """A finished write phase: keep its bank's ref unless a copy came first; returns its frames (a BatchResult)."""
        character, bank_ref = self._sent.pop(result_ref)
        if character not in self.refs:
            self.refs[character] = bank_ref
            self._bytes[character] = done.bank_bytes
            shown = len(done.batch.frames)
            log.info("ID bank of %s: %d identity frames (%d from the story, %d from its description) written by render "
                     "actor %d in %.1f s; %s in the object store", character, done.identity_frames, shown,
                     done.identity_frames - shown, actor, done.batch.busy_s, size(done.bank_bytes))
        return done.batch

    def check_room(self) -> None:
        check_room(sum(self._bytes.values()))


def check_room(need: float) -> None:
    """Warn, in one line, when the smallest live node's object store cannot hold `need` bytes of banks
    (Ray would spill them to disk and restore them on every fetch, or fail the fetch)."""
    stores = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n.get("Alive")]
    if stores and need > 0.8 * min(stores):
        log.warning("the ID banks take %s but the smallest node's object store holds %s: Ray will spill "
                    "them to disk; give it room (local runs: cluster.object_store_gb=; clusters: ray start "
                    "--object-store-memory) or lower method.id_length", size(need), size(min(stores)))


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
