"""The output directory's guard: never overwrite a finished render, resume only with the same config."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from .. import environment
from . import manifest, story_record
from ..atomic import replacing
from ..config import DraftConfig
from ..errors import UserError
from ..story.model import Story
from ..story.snapshot import compare, snapshot

CONFIG_FILE = "config.yaml"
# Settings that change pixels. Everything else (cluster layout, outputs, resume, logging) may differ on resume.
_PIXEL_KEYS = ("model", "render")
# compile and deterministic pick kernels, not arithmetic: at most the last bits of a frame differ, so a render
# may resume with them flipped (docs/determinism.md).
# offload moves weights between host and GPU, not arithmetic: a render may resume with another choice.
_IGNORED_MODEL_KEYS = ("device", "compile", "deterministic", "cache_dir", "sim", "offload")
_SIM_PIXEL_KEYS = ("embedding_dim", "image_size")  # model=sim: timings may differ on resume, outputs may not
# How many iterations to render is checked on its own: a finished render may be extended.
# stop_when_stable too: a render that stopped early may be resumed with another EPS (or none) to refine further.
_IGNORED_RENDER_KEYS = ("iterations", "stop_when_stable")
# Render keys added after renders existed: at these values they are left out, so older renders still resume.
_LATER_RENDER_DEFAULTS = {"reference_weighting": "uniform", "character_weight": 4.0, "scheduler": "ddim", "negative_prompt": None,
                          "draft": dataclasses.asdict(DraftConfig()), "distilled_guidance": None,
                          "refine_strength": None}
# Model keys added after renders existed, left out at these values likewise.
_LATER_MODEL_DEFAULTS = {"family": "sdxl"}
# method=storydiffusion|hybrid under render.seed_policy=shared: how identity frames get their noise. A render made
# before (every identity frame from the same noise) lacks it, so it is refused on resume rather than mixed.
IDENTITY_NOISE = "one draw per identity batch, as upstream"


@dataclass(frozen=True)
class RunDir:
    fresh: bool  # nothing there yet: `write_config` starts it
    ramp_iterations: int  # the scale ramp's length (the first render's render.iterations)
    finished: bool  # every requested iteration is on disk: nothing to render
    extends: bool  # resume=true with more iterations than the finished render had


def fingerprint(cfg: DictConfig, story: Story) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    fp = {k: resolved[k] for k in _PIXEL_KEYS}
    fp["model"] = {k: v for k, v in fp["model"].items()
                   if k not in _IGNORED_MODEL_KEYS and not (k in _LATER_MODEL_DEFAULTS and _LATER_MODEL_DEFAULTS[k] == v)}
    fp["render"] = {k: v for k, v in fp["render"].items()
                    if k not in _IGNORED_RENDER_KEYS and not (k in _LATER_RENDER_DEFAULTS and _LATER_RENDER_DEFAULTS[k] == v)}
    if not fp["model"].get("loras"):
        fp["model"].pop("loras", None)  # no LoRA: the same fingerprint as renders made before the key existed
    else:
        from .file_digest import digest

        # A LoRA is its bytes: the same file moved elsewhere resumes, another file under the same name does not.
        fp["model"]["loras"] = [{"sha256": digest(lw["path"]), "scale": lw["scale"]} for lw in fp["model"]["loras"]]
    draft = fp["render"].get("draft")
    if draft and draft.get("lora"):
        from .file_digest import digest

        draft["lora"] = {"sha256": digest(draft["lora"], "render.draft.lora")}  # moved elsewhere resumes; other bytes do not
    if draft and draft.get("vae"):
        from .file_digest import tree_digest

        draft["vae"] = {"sha256": tree_digest(draft["vae"], "render.draft.vae")}
    elif draft:
        draft.pop("vae", None)  # unset: the same fingerprint as drafts made before the key existed
    if fp["model"].get("kind") == "sim":
        fp["model"]["sim"] = {k: resolved["model"]["sim"][k] for k in _SIM_PIXEL_KEYS}
    method = resolved.get("method", {})
    if method.get("name", "story_adapter") != "story_adapter":
        # Absent for the default, so renders from before methods still resume; where banks come from moves no pixel.
        fp["method"] = {k: v for k, v in method.items() if k not in ("id_banks", "freeu")}
        if story.photos:  # photos weigh per character in the CSA pass since this key: older renders differ
            fp["method"]["photos"] = "per_character"
        if resolved["render"].get("seed_policy") == "shared":
            # Identity frames start from one batched draw since this key (story/identity.py): older renders differ.
            fp["method"]["identity_noise"] = IDENTITY_NOISE
    if method.get("freeu", {}).get("enabled"):  # absent when off: renders from before the key still resume
        fp.setdefault("method", {})["freeu"] = {k: v for k, v in method["freeu"].items() if k != "enabled"}
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


def check(out_dir: Path, cfg: DictConfig, story: Story, resume: bool, iterations: int) -> RunDir:
    """Refuse to touch an existing render unless resuming it with the same pixel settings.

    `render.iterations` may grow on resume once every iteration of the render is finished: the new
    iterations continue at the end of the scale ramp. Writes nothing.
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
        old_fp = saved.get("fingerprint", {})
        old_fp["render"] = {k: v for k, v in old_fp.get("render", {}).items() if k not in _IGNORED_RENDER_KEYS}
        diffs = _differences(old_fp, new)
        if diffs and all(d.startswith("story.") for d in diffs) and (edited := story_edited(out_dir, story)):
            raise UserError(f"resume=true refused: the story changed since {out_dir} was rendered ({edited}); "
                            "to apply the change to the finished render, rerun with edit=true instead of resume=true")
        if diffs:
            raise UserError(f"resume=true refused: {config_path} was rendered with different settings: {'; '.join(diffs[:4])}")
        return _iterations_on_resume(out_dir, saved, iterations)
    return RunDir(fresh=True, ramp_iterations=iterations, finished=False, extends=False)


def story_edited(out_dir: Path, story: Story) -> str | None:
    """What `story` changes from the one the render in `out_dir` recorded ('frames 3 and 7: prompt; Lisa:
    description'), or None when the render recorded none (renders made before story.json) or nothing differs."""
    recorded = story_record.read(out_dir)
    if recorded is None:
        return None
    return compare(recorded, snapshot(story)).describe() or None


def _iterations_on_resume(out_dir: Path, saved: dict, wanted: int) -> RunDir:
    had = int(saved.get("schedule", {}).get("iterations", saved.get("render", {}).get("iterations", wanted)))
    ramp = int(saved.get("schedule", {}).get("ramp_iterations", had))
    done = manifest.finished_iterations(out_dir)
    finished_had = done[: had + 1] == list(range(had + 1))
    if wanted < had:
        raise UserError(f"render.iterations={wanted}: resume=true cannot drop iterations from a render of {had} "
                        f"(its output_dir keeps them); pass render.iterations={had}")
    if wanted > had and not finished_had:
        raise UserError(f"render.iterations={wanted}: this render of {had} iterations is not finished; "
                        f"finish it first with render.iterations={had} resume=true, then extend it")
    finished = done[: wanted + 1] == list(range(wanted + 1))
    return RunDir(fresh=False, ramp_iterations=ramp, finished=finished, extends=wanted > had)


def write_config(out_dir: Path, cfg: DictConfig, story: Story, iterations: int, ramp_iterations: int,
                 env: dict | None = None) -> None:
    """`env`: the library versions and device it renders with (environment.py), recorded beside the fingerprint."""
    config_path = out_dir / CONFIG_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {**OmegaConf.to_container(cfg, resolve=True), "title": story.title, "fingerprint": fingerprint(cfg, story),
                "schedule": {"iterations": iterations, "ramp_iterations": ramp_iterations}}
    if env:
        document["environment"] = env
    if revisions := _recorded_revisions(config_path):  # an edited render extended (resume, edit.refine) keeps its history
        document["revisions"] = revisions
    with replacing(config_path) as tmp:
        tmp.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _recorded_revisions(config_path: Path) -> list | None:
    try:
        return (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("revisions")
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
        return None


def environment_changed(out_dir: Path, env: dict | None) -> str | None:
    """On resume: one warning line when the render was started on other library versions or another device.
    Refuses nothing: the settings are the same, only the last bits of some values may differ."""
    if not env:
        return None
    try:
        saved = yaml.safe_load((out_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # check() read it a moment ago; whatever happened since, it is not this line's business
    changed = environment.differences(saved.get("environment"), env)
    if changed:
        return (f"resume: {out_dir / CONFIG_FILE} was rendered with other versions or another device ({changed}); "
                "the new frames' pixels may differ from the old ones in the last bits")
    return None


PROBE_BYTES = 4096


def probe_writable(out_dir: Path) -> None:
    """Fail in a second, not after Ray and the model have started, when `out_dir` cannot take files:
    a file in the way, a read-only file system, no permission, a full disk. Leaves nothing behind."""
    folder = Path(out_dir)
    try:
        while not folder.exists() and folder.parent != folder:  # the nearest existing folder: where mkdir would start
            folder = folder.parent
        if not folder.is_dir():
            raise UserError(f"output_dir={out_dir}: {folder} is a file, not a folder")
        with tempfile.TemporaryFile(dir=folder, prefix=".storyadapter-probe-") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())  # a full disk may only say so once the blocks are allocated
    except OSError as exc:
        raise UserError(f"output_dir={out_dir}: {exc.strerror or exc}") from None
