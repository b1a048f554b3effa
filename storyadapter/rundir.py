"""The output directory's guard: never overwrite a finished render, resume only with the same config."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from .atomic import replacing
from .errors import UserError
from .story import Story

CONFIG_FILE = "config.yaml"
# Settings that change pixels. Everything else (cluster layout, outputs, resume, logging) may differ on resume.
_PIXEL_KEYS = ("model", "render")
_IGNORED_MODEL_KEYS = ("device", "compile", "cache_dir")
# How many iterations to run is not a pixel setting: a run that stopped early may be resumed with another EPS.
_IGNORED_RENDER_KEYS = ("stop_when_stable",)
# Render keys added after renders existed: at these values they are left out, so older renders still resume.
_LATER_RENDER_DEFAULTS = {"reference_weighting": "uniform", "character_weight": 4.0}


def fingerprint(cfg: DictConfig, story: Story) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    fp = {k: resolved[k] for k in _PIXEL_KEYS}
    fp["model"] = {k: v for k, v in fp["model"].items() if k not in _IGNORED_MODEL_KEYS}
    fp["render"] = {k: v for k, v in fp["render"].items()
                    if k not in _IGNORED_RENDER_KEYS and not (k in _LATER_RENDER_DEFAULTS and _LATER_RENDER_DEFAULTS[k] == v)}
    fp["story"] = {"digest": story.digest, "style": story.style}
    if story.photos:  # the story file names its photos; their pixels are fingerprinted here
        fp["story"]["photos"] = {name: photo.sha256 for name, photo in story.photos.items()}
    return fp


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return diffs


def check(out_dir: Path, cfg: DictConfig, story: Story, resume: bool) -> bool:
    """Refuse to touch an existing render unless resuming it with the same pixel settings.

    Writes nothing. Returns True when the directory is fresh and `write_config` should start it.
    """
    config_path = out_dir / CONFIG_FILE
    new = fingerprint(cfg, story)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output_dir={out_dir}: exists and is not a directory")
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if occupied and not resume:
        raise UserError(f"output_dir={out_dir}: already holds files; pass resume=true to continue that render, or pick a new output_dir")
    if occupied:
        if not config_path.is_file():
            raise UserError(f"output_dir={out_dir}: resume=true but {CONFIG_FILE} is missing, so this is not a render to resume")
        try:
            saved = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"{config_path}: unreadable ({type(exc).__name__})") from None
        diffs = _differences(saved.get("fingerprint", {}), new)
        if diffs:
            raise UserError(f"resume=true refused: {config_path} was rendered with different settings: {'; '.join(diffs[:4])}")
        return False
    return True


def write_config(out_dir: Path, cfg: DictConfig, story: Story) -> None:
    config_path = out_dir / CONFIG_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {**OmegaConf.to_container(cfg, resolve=True), "fingerprint": fingerprint(cfg, story)}
    with replacing(config_path) as tmp:
        tmp.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
