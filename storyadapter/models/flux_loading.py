"""Load a FLUX pipeline with the XLabs IP-Adapter the same way for real and tiny weights (model.family=flux).

`FluxPipeline.from_pretrained` + `pipe.load_ip_adapter(...)`, as diffusers documents XLabs-AI/flux-ip-adapter-v2:
the adapter's safetensors go through diffusers' XLabs key conversion, its image encoder (CLIP ViT-L/14) comes
from a repo or folder of its own (`image_encoder_folder`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .source import ModelSource, is_local, offline

RANDOM_MARKER = "random:flux"  # model=flux-random (models/flux_random.py): full-size shapes built in memory


def fetch_hint(source: ModelSource) -> str:
    return (f"fetch them once with `hf download {source.pretrained}` (FLUX.1-dev is gated: accept its license on "
            f"huggingface.co first), `hf download {source.ip_adapter} {source.ip_adapter_weight}` and "
            f"`hf download {source.image_encoder_folder}` (or set model.pretrained / model.ip_adapter / "
            "model.image_encoder_folder to local folders)")


def weight_files(source: ModelSource) -> list[tuple[str, str, str]]:
    """(reference, file that shows it is there, config key) for each part of the model."""
    weight = f"{source.ip_adapter_subfolder}/{source.ip_adapter_weight}" if source.ip_adapter_subfolder else source.ip_adapter_weight
    return [(source.pretrained, "model_index.json", "model.pretrained"),
            (source.ip_adapter, weight, "model.ip_adapter"),
            (source.image_encoder_folder, "config.json", "model.image_encoder_folder")]


def check_available(source: ModelSource) -> None:
    """Fail fast, before any worker starts, with one line saying how to get missing weights, or naming an
    IP-Adapter that is not FLUX-shaped."""
    if source.pretrained == RANDOM_MARKER:
        return
    for ref, marker, key in weight_files(source):
        if is_local(ref):
            if not (Path(ref).expanduser() / marker).is_file():
                raise UserError(f"{key}={ref}: {marker} not found in that folder")
            continue
        if offline():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(ref, marker), str):
                raise UserError(f"{key}={ref}: weights are not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                                f"set; {fetch_hint(source)}")
    check_ip_adapter(source)


def _ip_adapter_file(source: ModelSource) -> str | None:
    ref = source.ip_adapter
    parts = [p for p in (source.ip_adapter_subfolder, source.ip_adapter_weight) if p]
    if is_local(ref):
        return str(Path(ref).expanduser().joinpath(*parts))
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref, "/".join(parts))
    return found if isinstance(found, str) else None  # not downloaded yet: diffusers checks it when it loads


def check_ip_adapter(source: ModelSource) -> None:
    """The IP-Adapter file has XLabs' FLUX keys (`double_blocks.N...ip_adapter_double_stream_k_proj`), not an
    SDXL adapter's (`ip_adapter.N.to_k_ip`): read from the safetensors header, no tensor loaded."""
    path = _ip_adapter_file(source)
    if path is None:
        return
    from .safetensors_header import tensor_shapes

    keys = tensor_shapes(path, f"model.ip_adapter={source.ip_adapter}")
    if not any(k.startswith("double_blocks.") and "ip_adapter_double_stream_k_proj" in k for k in keys):
        raise UserError(f"model.ip_adapter={source.ip_adapter}: {Path(path).name} is not a FLUX IP-Adapter (no "
                        "double_blocks.N.processor.ip_adapter_double_stream_k_proj weights, as in "
                        "XLabs-AI/flux-ip-adapter-v2); an SDXL IP-Adapter needs an SDXL model")


def load_pipeline(source: ModelSource, device: torch.device, dtype: torch.dtype):
    """FluxPipeline from a hub id or folder, LoRAs fused, the XLabs IP-Adapter and its image encoder; on `device`."""
    from diffusers import FluxPipeline

    from ..logs import quiet_libraries
    from . import lora

    quiet_libraries()
    if source.pretrained == RANDOM_MARKER:
        from .flux_random import build_pipeline  # the fluxbench branch's module

        pipe = build_pipeline(device, dtype)
        lora.apply(pipe, source.loras)
    else:
        try:
            pipe = FluxPipeline.from_pretrained(source.pretrained, dtype=dtype, variant=source.variant)
        except (OSError, EnvironmentError) as exc:
            raise UserError(f"model.pretrained={source.pretrained}: could not load weights ({exc}); {fetch_hint(source)}") from None
        lora.apply(pipe, source.loras)  # fused into plain layers before the IP-Adapter swaps the attention processors
        try:
            pipe.load_ip_adapter(source.ip_adapter, weight_name=source.ip_adapter_weight,
                                 subfolder=source.ip_adapter_subfolder,
                                 image_encoder_pretrained_model_name_or_path=source.image_encoder_folder,
                                 image_encoder_dtype=dtype)
        except (OSError, EnvironmentError) as exc:
            raise UserError(f"model.ip_adapter={source.ip_adapter}: could not load weights ({exc}); {fetch_hint(source)}") from None
    pipe.set_progress_bar_config(disable=True)
    if source.offload == "none":
        return pipe.to(device)
    if device.type != "cuda":
        raise UserError(f"model.offload={source.offload}: offloading needs a GPU, and this worker renders on {device}; "
                        "use model.offload=none")
    return pipe  # on the host: the backbone takes the IP-Adapter's layers out first, then offloads (FluxBackbone.offload)
