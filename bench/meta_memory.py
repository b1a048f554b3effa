"""The peak of live activation bytes while a function runs on meta tensors: shapes only, no memory used.

Every tensor an aten op creates is counted from its creation until the last tensor sharing its storage is freed
(Python reference counting frees meta tensors when a caching-free allocator would free real ones), so the peak
is what a GPU holds beyond the weights at the worst moment of the call, before allocator slack. Weights and
tensors made before the call are not counted.

Attention is counted as a fused kernel (flash / memory-efficient SDPA, what diffusers runs on a GPU): its output
only. On the meta device torch would decompose it into the math path, whose tokens x tokens score matrix a GPU
never holds.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _FusedAttention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            value = args[2] if len(args) > 2 else kwargs["value"]
            return query.new_empty(*query.shape[:-1], value.shape[-1])
        return func(*args, **kwargs)


class _LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._holders: dict[int, int] = {}  # storage -> live tensors made by ops that use it

    def _release(self, key: int, nbytes: int) -> None:
        self._holders[key] -= 1
        if self._holders[key] == 0:
            del self._holders[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in inputs or t._is_view():
                continue  # in-place results and views add no storage
            storage = t.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if key not in self._holders:
                self._holders[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._holders[key] += 1
            weakref.finalize(t, self._release, key, nbytes)
        return out


def peak_activation_bytes(fn) -> int:
    """Peak bytes of the tensors fn() creates (on meta inputs), attention counted as a fused kernel."""
    tracker = _LiveBytes()
    with torch.no_grad(), _FusedAttention(), tracker:
        fn()
    return tracker.peak
