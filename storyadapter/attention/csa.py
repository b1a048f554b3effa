"""Consistent Self-Attention (StoryDiffusion, arXiv 2405.01434, Sec. 3.1), in the up blocks of the UNet.

A frame's self-attention (attn1) also attends to sampled tokens of its characters' identity images:

    out = softmax(Q K^T / sqrt(d)) V,   Q = to_q(x),  [K; V] = [to_k; to_v]([S_1; ...; S_m; x])

where x is the layer's input (the normed hidden states) and S_c the tokens kept by a Bernoulli mask
(rate sa32 at 1/32 resolution, sa64 at 1/16) from the identity images. Two phases, per character:
  * write: its identity frames render as one batch; each image attends to the others' sampled tokens,
    and every image's sampled tokens are stored per layer and step: the character's ID bank;
  * read: every other frame attends to the banks of the characters it names, at the same layer and step.
The masks are redrawn every step and shared by all layers of one resolution; step < plain_steps uses
plain self-attention, later steps apply CSA on a layer call with probability early_rate/late_rate.
All draws come from generators seeded per identity batch or per frame, so the pattern is deterministic.
Banks live on the host and each layer's slice moves to the accelerator when used (docs/methods.md, "The ID bank, measured").
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

import torch
from torch import nn

from ..methods import CSASettings
from .processors import attend_to


class IdBank:
    """One character's sampled identity tokens, (2, T, C) [unconditional; conditional] per (step, layer)."""

    def __init__(self, character: str):
        self.character = character
        self.tokens: dict[tuple[int, str], torch.Tensor] = {}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tokens.values())

    def pack(self) -> "PackedBank":
        """Move the bank into one flat byte array plus an index, emptying `tokens` as it goes (so a full-size
        bank is never held twice here). Ray stores the array in the object store once per node, and readers
        map it without copying (a dict of tensors would be pickled tensor by tensor)."""
        keys = sorted(self.tokens)
        dtypes = {self.tokens[k].dtype for k in keys}
        if len(dtypes) > 1:
            raise ValueError(f"ID bank of {self.character} mixes dtypes {sorted(map(str, dtypes))}")
        dtype = dtypes.pop() if dtypes else torch.float16
        data = np.empty(sum(self.tokens[k].numel() for k in keys) * dtype.itemsize, dtype=np.uint8)
        flat, offset, index = torch.from_numpy(data), 0, []
        for step, layer in keys:
            t = self.tokens.pop((step, layer)).contiguous()
            n = t.numel() * t.element_size()
            flat[offset:offset + n] = t.reshape(-1).view(torch.uint8)
            index.append((step, layer, tuple(t.shape)))
            offset += n
        return PackedBank(self.character, str(dtype).removeprefix("torch."), tuple(index), data)

    @classmethod
    def unpack(cls, packed: "PackedBank") -> "IdBank":
        """Tensors that view `packed.data` (no copy: the data stays where Ray put it, shared by a node's actors)."""
        bank = cls(packed.character)
        dtype = getattr(torch, packed.dtype)
        with warnings.catch_warnings():  # a read-only object-store buffer; the bank is only ever read
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(packed.data)
        offset = 0
        for step, layer, shape in packed.index:
            n = math.prod(shape) * dtype.itemsize
            bank.tokens[(step, layer)] = data[offset:offset + n].view(dtype).view(shape)
            offset += n
        return bank


@dataclass(frozen=True)
class PackedBank:
    character: str
    dtype: str
    index: tuple[tuple[int, str, tuple[int, ...]], ...]  # (step, layer, shape) in data order
    data: np.ndarray  # uint8

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class WritePhase:
    bank: IdBank
    images: int
    generator: torch.Generator
    masks: dict[tuple[int, str], torch.Tensor]  # (step, resolution) -> (images, tokens) bool


@dataclass
class ReadPhase:
    characters: list[tuple[str, ...]]  # per frame of the batch
    generators: list[torch.Generator]


class ConsistentSelfAttention:
    """State shared by every CSA processor of one UNet: phase, denoising step, random streams, ID banks.

    The renderer drives it (`begin_step`, `writing`, `reading`); the processors, which get it in their
    constructor, read `phase`, `step`, `settings`, `banks`, `bank_device` and draw from `mask` and `gate`.
    """

    def __init__(self, settings: CSASettings, bank_device: torch.device | str = "cpu"):
        self.settings = settings
        self.bank_device = torch.device(bank_device)  # the host: banks outgrow an accelerator (docs/methods.md)
        self.banks: dict[str, IdBank] = {}
        self.step = 0
        self.branches = 2  # the batch's guidance halves: [uncond; cond], or 1 (conditional only, no guidance)
        self._phase: WritePhase | ReadPhase | None = None

    @property
    def phase(self) -> WritePhase | ReadPhase | None:
        """The phase in progress (None: plain self-attention)."""
        return self._phase

    def begin_step(self, step: int) -> None:
        """Called by the renderer at each denoising step, so an interrupted render cannot leave a stale count."""
        self.step = step

    @contextmanager
    def writing(self, character: str, images: int, seed: int):
        """Render `images` identity frames of `character` as one batch and store its ID bank."""
        bank = IdBank(character)
        self._phase = WritePhase(bank, images, torch.Generator("cpu").manual_seed(seed), {})
        try:
            yield bank
            self.banks[character] = bank
        finally:
            self._phase = None

    @contextmanager
    def reading(self, characters: list[tuple[str, ...]], seeds: list[int]):
        """Render a batch of frames, each attending to the banks of the characters it names."""
        missing = sorted({c for cs in characters for c in cs} - set(self.banks))
        if missing:
            raise RuntimeError(f"no ID bank for {missing}: render their identity frames first")
        self._phase = ReadPhase(list(characters), [torch.Generator("cpu").manual_seed(s) for s in seeds])
        try:
            yield
        finally:
            self._phase = None

    def mask(self, phase: WritePhase, resolution: str, tokens: int) -> torch.Tensor:
        """This step's Bernoulli mask of the tokens each identity image shares, (images, tokens), one per resolution."""
        key = (self.step, resolution)
        if key not in phase.masks:
            rate = self.settings.sa32 if resolution == "sa32" else self.settings.sa64
            phase.masks[key] = torch.rand((phase.images, tokens), generator=phase.generator) < rate
        return phase.masks[key]

    def gate(self, generator: torch.Generator) -> bool:
        """Whether this layer call applies CSA, at this step's rate, from `generator`'s stream."""
        rate = self.settings.rate(self.step)
        return rate > 0.0 and torch.rand((), generator=generator).item() < rate


class ConsistentSelfAttnProcessor(nn.Module):
    """attn1 processor of one up-block layer; plain self-attention (diffusers' own) outside a CSA phase."""

    def __init__(self, state: ConsistentSelfAttention, layer: str, resolution: str):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.state, self.layer, self.resolution = state, layer, resolution
        self.plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        phase = self.state.phase
        if phase is None or encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3 \
                or attn.spatial_norm is not None or attn.group_norm is not None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if isinstance(phase, WritePhase):
            return self._write(attn, hidden_states, phase)
        return self._read(attn, hidden_states, phase)

    def _write(self, attn, hidden_states, phase: WritePhase):
        state, n = self.state, phase.images
        if state.settings.rate(state.step) == 0.0:  # plain steps never read the bank: nothing to store
            return self.plain(attn, hidden_states)
        x = hidden_states.view(state.branches, n, *hidden_states.shape[1:])  # guidance: [uncond; cond], or [cond]
        mask = self._mask_on(phase, x.shape[2], x.device)
        sampled = [x[:, i][:, mask[i]] for i in range(n)]
        phase.bank.tokens[(state.step, self.layer)] = torch.cat(sampled, dim=1).to(state.bank_device, copy=True)
        if not state.gate(phase.generator):
            return self.plain(attn, hidden_states)
        outs = [attend_to(attn, x[:, i], torch.cat(sampled[:i] + sampled[i + 1:] + [x[:, i]], dim=1))
                for i in range(n)]
        return torch.stack(outs, dim=1).reshape(hidden_states.shape[0], *outs[0].shape[1:])

    def _mask_on(self, phase: WritePhase, tokens: int, device) -> torch.Tensor:
        return self.state.mask(phase, self.resolution, tokens).to(device)

    def _read(self, attn, hidden_states, phase: ReadPhase):
        state = self.state
        gates = [bool(chars) and state.gate(g) for chars, g in zip(phase.characters, phase.generators)]
        if not any(gates):  # the whole batch exactly as plain SDXL: [NC] frames equal text-only renders
            return self.plain(attn, hidden_states)
        m = len(phase.characters)
        x = hidden_states.view(state.branches, m, *hidden_states.shape[1:])
        # Each bank slice crosses to the accelerator once per layer call, however many frames of the batch read it.
        needed = sorted({c for f, use in enumerate(gates) if use for c in phase.characters[f]})
        slices = {c: state.banks[c].tokens[(state.step, self.layer)].to(x.device, x.dtype, non_blocking=True) for c in needed}
        outs = []
        for f, use in enumerate(gates):
            if not use:
                outs.append(self.plain(attn, x[:, f]))
                continue
            bank = [slices[c] for c in phase.characters[f]]
            outs.append(attend_to(attn, x[:, f], torch.cat(bank + [x[:, f]], dim=1)))
        return torch.stack(outs, dim=1).reshape(hidden_states.shape[0], *outs[0].shape[1:])


def install(backbone, settings: CSASettings, bank_device: torch.device | str = "cpu") -> ConsistentSelfAttention:
    """Put CSA processors on the backbone's self-attention layers for it (SDXL: the up blocks'); every other
    processor stays. The coarsest resolution samples at sa32, the finer ones at sa64 (SDXL: 30 layers at
    1/32, 6 at 1/16)."""
    state = ConsistentSelfAttention(settings, bank_device)
    layers = backbone.self_attention_layers()
    if not layers:
        raise RuntimeError("the backbone has no self-attention layers for consistent self-attention")
    backbone.set_attention_processors({layer: ConsistentSelfAttnProcessor(state, layer, "sa32" if rank == 0 else "sa64")
                                       for layer, rank in layers.items()})
    return state
