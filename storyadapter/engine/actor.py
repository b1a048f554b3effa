"""The render actor: one loaded worker (a FrameWorker, or the simulated one) behind Ray, on a GPU or CPU slot.

The worker is built once in `__init__`, so the model loads once per actor; every call is the worker's own.
What the actor adds is Ray's side of it: ID banks arrive as refs and are fetched only when a frame reads them,
a write phase returns its bank as a second object, and a worker's UserError reaches the driver as itself.
"""

from __future__ import annotations

import os

import ray

from ..errors import UserError
from .id_banks import IdentityDone
from .protocol import BankUnavailable


@ray.remote
class RenderActor:
    def __init__(self, spec, clip=None):
        self.worker = spec.build()  # a FrameWorker, or a simulated one: torch is imported only by the former
        self.clip = clip() if clip else None  # the evaluation CLIP's embeddings, as the caller gave it (worker side)

    def ready(self) -> int:
        return os.getpid()

    def environment(self) -> dict | None:
        """The worker's library versions and device; None for a worker that does not say."""
        describe = getattr(self.worker, "environment", None)
        return describe() if describe else None

    def begin_iteration(self, iteration, bank, scale, draft=False):
        return self.worker.begin_iteration(iteration, bank, scale, draft=draft)

    def render_batch(self, iteration, frames, id_bank_refs=None):
        # The refs arrive unresolved (nested in a dict): a worker fetches only the banks its frames read, once.
        if not id_bank_refs:
            return self.worker.render_batch(iteration, frames)
        return self.worker.render_batch(iteration, frames, {c: _bank_loader(ref) for c, ref in id_bank_refs.items()})

    @ray.method(num_returns=2)
    def write_identity(self, iteration, character):
        # Two objects: the driver waits on the small one. The bank stays in this node's object store, owned by
        # the driver, until the driver drops its ref and no reader maps it; a node pulls it once for its actors.
        result = self.worker.write_identity(iteration, character, share=True)
        frames = len(self.worker.spec.consistent.owned(character).frames)
        return IdentityDone(result.batch, result.bank.nbytes, frames), result.bank

    def forget_banks(self):
        self.worker.forget_banks()

    def counters(self) -> dict[str, int]:
        """The worker's work counts (images encoded, identity frames rendered, ID banks fetched)."""
        return {k: getattr(self.worker, k, 0) for k in ("image_encodes", "identity_renders", "banks_fetched")}

    def clip_embeddings(self, clip_model: str, paths: list[str], texts: list[str]):
        """Evaluation CLIP on this actor's device: (image embeddings of `paths`, text embeddings of `texts`)."""
        if self.clip is None:
            raise RuntimeError("RayExecutor was started without clip=: its actors have no evaluation CLIP")
        return self.clip(clip_model, paths, texts)


def _bank_loader(ref):
    """Fetch an ID bank; a Ray failure (lost object, dead owner) becomes BankUnavailable (protocol.py)."""
    def load():
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise BankUnavailable(type(exc).__name__) from exc

    return load


def unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task/actor error, if there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc


def get_unwrapped(refs):
    """ray.get, raising a worker's UserError as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None
