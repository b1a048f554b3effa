"""The tensor names and shapes of a .safetensors file, from its header only: the driver's checks of
checkpoints, LoRAs and VAEs read no weights."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def tensor_shapes(path: str | Path, where: str) -> dict[str, tuple[int, ...]]:
    """`{name: shape}`; a missing or unreadable file is one line naming `where` (the config key and value)."""
    from safetensors import SafetensorError, safe_open

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{where}: no such file")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{where}: not a readable .safetensors file ({exc})") from None
