"""Structured configs: typed dataclasses that validate every Hydra override.

The `conf/` tree picks values; these classes define which keys exist, their types and defaults. spec.py freezes
them into the specs every layer receives, and holds the checks types cannot express (allowed values, ranges).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class StoryConfig:
    path: str = MISSING  # .txt (plain or StoryDiffusion form), .yaml/.yml or .json
    style: Optional[str] = None  # overrides the story file's style
    title: Optional[str] = None  # overrides the story file's title (a .txt story's is its file name)


@dataclass
class LoraConfig:
    path: str = MISSING  # a LoRA .safetensors file (diffusers/peft or Kohya layout)
    scale: float = 1.0


@dataclass
class SimConfig:
    """model=sim: how long a simulated frame takes and what it yields (storyadapter/engine/sim.py)."""

    frame_s: float = 0.05  # mean seconds per frame
    jitter: float = 0.1  # each frame's time varies by up to +-this share, the same every run
    straggler_share: float = 0.0  # share of the GPU nodes that are slow (rounded to whole nodes)
    slowdown: float = 1.5  # frame time factor on a slow node
    embedding_dim: int = 16
    image_size: int = 32  # PNG side in pixels
    trace_dir: Optional[str] = None  # one file per batch started (the benchmark counts repeated work)


@dataclass
class ModelConfig:
    name: str = "realvisxl"
    kind: str = "hub"  # hub (ids or local folders) | tiny (built offline) | sdxl-random, flux-random (full size, random) | sim
    family: str = "sdxl"  # sdxl (SDXL + IP-Adapter) | flux (FLUX + XLabs IP-Adapter): which pipeline and backbone load it
    pretrained: str = "SG161222/RealVisXL_V4.0"  # hub id, diffusers folder, or one SDXL .safetensors checkpoint
    # For a .safetensors `pretrained`: a diffusers SDXL folder whose component configs and tokenizers the file is
    # built into (its weights are not read). Default: SDXL base 1.0's configs, written offline.
    single_file_config: Optional[str] = None
    vae: Optional[str] = None  # replaces the checkpoint's VAE: hub id, folder or .safetensors (e.g. an fp16-safe SDXL VAE)
    loras: List[LoraConfig] = field(default_factory=list)  # [{path: ..., scale: 0.8}, ...], fused once per worker
    ip_adapter: str = "h94/IP-Adapter"
    ip_adapter_subfolder: str = "sdxl_models"
    ip_adapter_weight: str = "ip-adapter_sdxl.safetensors"
    image_encoder_folder: str = "image_encoder"
    variant: Optional[str] = None
    dtype: str = "auto"  # auto: float16 on GPU, float32 on CPU
    device: str = "auto"
    compile: bool = False  # torch.compile the UNet (GPU)
    # FLUX: none | model | blocks: CPU offload of each actor's pipeline on its GPU (model: enable_model_cpu_offload,
    # whole components move in when used; blocks: the transformer's blocks stream in one at a time, diffusers' group
    # offloading: fits 24 GB). sequential (layer by layer) is refused: it fails in this environment (docs/flux.md)
    offload: str = "none"
    # GPU: true pins cuDNN to deterministic kernels (same pixels on every run and worker); false lets it
    # autotune (cudnn.benchmark), which may be faster and may change the last bits of a frame between runs.
    deterministic: bool = True
    cache_dir: Optional[str] = None  # where model=tiny is built; default $STORYADAPTER_CACHE or ~/.cache/storyadapter
    sim: SimConfig = field(default_factory=SimConfig)


@dataclass
class DraftConfig:
    """Settings of every iteration before the last (render=swift). Those iterations only feed the next bank (each
    frame's CLIP embedding at render.reference_size), so they may be cheap; null keeps the last pass's value."""

    steps: Optional[int] = None
    scheduler: Optional[str] = None  # ddim (as upstream) | euler_trailing (SDXL-Lightning) | lcm | tcd
    guidance_scale: Optional[float] = None  # at <= 1: one UNet pass per step (no unconditional branch)
    height: Optional[int] = None
    width: Optional[int] = None
    final: bool = False  # true: the last iteration is a draft too (the whole story at draft cost)
    # A few-step LoRA for the drafts only (SDXL-Lightning, Hyper-SD, LCM-LoRA, DMD2; .safetensors, UNet layers):
    # on for draft iterations, off for the last pass, on every worker alike. Users bring the file.
    lora: Optional[str] = None
    lora_scale: float = 1.0
    # An AutoencoderTiny (TAESDXL layout: a hub id, a diffusers folder or its .safetensors) that decodes the drafts
    # only; the last pass keeps the model's VAE. Users bring it (e.g. madebyollin/taesdxl).
    vae: Optional[str] = None


@dataclass
class RenderConfig:
    iterations: int = 10  # refinement iterations after the text-only iteration 0
    steps: int = 50
    height: int = 1024
    width: int = 1024
    guidance_scale: float = 7.5  # at <= 1: one denoiser pass per step, no unconditional branch
    negative_prompt: Optional[str] = None  # every frame's negative prompt; None: the style's
    # FLUX.1-dev's guidance embedding (distilled guidance, one pass per step); null: 3.5, diffusers' default.
    # SDXL has none. On FLUX, guidance_scale > 1 adds true CFG (a second pass with the negative prompt).
    distilled_guidance: Optional[float] = None
    # ddim (as upstream) | euler_trailing (SDXL-Lightning) | lcm | tcd | flow_euler (FLUX's flow matching) (spec.SCHEDULERS)
    scheduler: str = "ddim"
    scale_start: float = 0.3
    scale_end: float = 0.5
    seed: int = 2024
    # shared: every frame starts from the seed's noise, CSA identity frames from one batched draw (both as upstream)
    # | per_frame: each frame its own noise
    seed_policy: str = "shared"
    batch_size: int = 1
    reference_size: int = 256  # references are resized to this before CLIP
    # split | joint: GRCA's reference attention as two SDPA calls per layer (one per CFG half) or one.
    # Equal up to rounding (last bits of a frame), so it is a pixel setting.
    reference_sdpa: str = "split"
    # uniform: every frame attends to all references alike (the paper) | characters: references that share one of
    # the frame's named characters get their attention logits raised by log(character_weight)
    reference_weighting: str = "uniform"
    character_weight: float = 4.0
    # Stop once the mean 1 - cosine between a frame's embedding and its previous iteration's falls below this
    # (checked after each refinement); None: always run all iterations.
    stop_when_stable: Optional[float] = None
    # SDEdit warm starts (diffusers' img2img): a refinement starts from the previous iteration's frame, noised to
    # this strength, and runs only the last int(strength x steps) of its pass's steps (a draft's render.draft.steps,
    # the last pass's render.steps). None: every iteration starts from noise (the paper).
    refine_strength: Optional[float] = None
    draft: DraftConfig = field(default_factory=DraftConfig)  # iterations before the last (all of them with final)


@dataclass
class FreeUConfig:
    """FreeU (Si et al., 2023) in the UNet's decoder: b1/b2 amplify the backbone features of the two coarsest up
    stages, s1/s2 damp the low frequencies of their skip features. The values are upstream StoryDiffusion's
    (docs/methods.md, "FreeU"). Default on for storydiffusion and hybrid's CSA pass, as upstream; off for story_adapter."""

    enabled: bool = False
    s1: float = 0.6
    s2: float = 0.4
    b1: float = 1.1
    b2: float = 1.2


@dataclass
class MethodConfig:
    """How character consistency is made: Story-Adapter's GRCA iterations, StoryDiffusion's consistent
    self-attention (CSA, one pass), or a hybrid whose iteration 0 is the CSA pass (storyadapter/attention/csa.py)."""

    name: str = "story_adapter"  # methods.METHODS: story_adapter | storydiffusion | hybrid
    id_length: int = 4  # identity frames per character rendered together (the write phase)
    sa32: float = 0.5  # share of each identity image's tokens kept in the ID bank at 1/32 resolution
    sa64: float = 0.5  # ... and at 1/16 resolution
    plain_steps: int = 1  # the first denoising steps use plain self-attention
    early_steps: int = 20  # steps before this apply CSA with probability early_rate ...
    early_rate: float = 0.7
    late_rate: float = 0.9  # ... and from it on with late_rate
    # shared: each character's write phase runs once, on one actor, and its ID bank reaches the others through
    # Ray's object store | rerender: every actor renders the write phases it needs itself (docs/methods.md, "The ID bank, measured")
    id_banks: str = "shared"
    # storydiffusion/hybrid: in the CSA pass (iteration 0) only, so hybrid's refinements stay story_adapter's;
    # story_adapter (enabled by hand): in every iteration
    freeu: FreeUConfig = field(default_factory=FreeUConfig)


@dataclass
class ClusterConfig:
    mode: str = "local"  # local: Ray started in-process | ray: connect to an existing cluster
    address: Optional[str] = None  # for mode=ray; else RAY_ADDRESS, else the last `ray start` on this machine
    connect_timeout_s: float = 30.0  # mode=ray: a wrong address is refused in one line within this
    workers: int = 1  # render actors wanted; the run asks for them as long as it lasts
    # The run starts once this many actors are placed and loaded (null: 1, any one actor makes progress);
    # fewer within ready_timeout_s stops it in one line
    min_workers: Optional[int] = None
    gpus_per_worker: float = 1.0  # used when GPUs are present; fractions share a GPU
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1  # torch intra-op threads on CPU workers
    max_restarts: int = 3  # Ray may restart a dead worker; its batches go to other workers meanwhile
    ready_timeout_s: float = 600.0  # placing cluster.min_workers workers (an autoscaling cluster grows meanwhile) and loading the model
    batch_timeout_s: float = 120.0  # a worker that finishes no batch for max(this, factor x median batch time) loses its batches
    batch_timeout_factor: float = 5.0
    capacity_timeout_s: float = 300.0  # no live worker for this long (lost nodes, no capacity): stop, keeping every finished frame
    object_store_gb: Optional[float] = None  # cluster=local: Ray's object store size (null: Ray's 30% of RAM); CSA's ID banks live there


@dataclass
class OutputsConfig:
    enabled: bool = True
    comic_layout: str = "classic"  # classic | four | single
    caption_position: str = "below"  # below | above


@dataclass
class EvalConfig:
    # CLIP (local path or hub id) for metrics. Without one, consistency comes from the pipeline's own
    # image embeddings and CLIP-T is left out; model=tiny brings a tiny CLIP.
    clip_model: Optional[str] = None


@dataclass
class EditConfig:
    """Applying an edited story file to a finished render (edit_story.py). On the command line `edit=true` is
    edit.apply=true (launch.py)."""

    apply: bool = False  # edit=true: render again only what the edit needs, at the last iteration
    refine: int = 0  # then this many more refinement iterations over the whole story (every frame changes)


@dataclass
class Config:
    story: StoryConfig = field(default_factory=StoryConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = MISSING
    resume: bool = False
    edit: EditConfig = field(default_factory=EditConfig)
    log_level: str = "INFO"


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="storyadapter_schema", node=Config)
