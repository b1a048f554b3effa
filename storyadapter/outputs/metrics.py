"""Story metrics from a separate evaluation CLIP: text alignment (CLIP-T) and character consistency.

The renderer's own image encoder is not used: evaluating with the encoder that conditioned the
images would grade the model by its own yardstick. Everything here reads the manifest and PNGs only.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..atomic import replacing
from ..rundir import manifest
from ..errors import UserError

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_PNG = "metrics.png"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # recommended for eval.clip_model / --clip-model: CLIP ViT-L/14
_BATCH = 32  # bounds memory for long stories with a ViT-L on a laptop


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _image_processor_class():
    # Without torchvision, transformers 5 falls back to the PIL processor with a warning;
    # pick it directly so the preprocessing (and hence the numbers) does not depend on that probe.
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


class ClipScorer:
    """A CLIP model that embeds images and texts into one L2-normalised space."""

    def __init__(self, model_path_or_id: str, device: str = "cpu", key: str = "eval.clip_model"):
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        self.name = str(model_path_or_id)
        self.device = torch.device(device)
        try:
            self.model = CLIPModel.from_pretrained(self.name).to(self.device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(self.name)
            self.processor = _image_processor_class().from_pretrained(self.name)
        except (OSError, ValueError) as exc:
            if Path(self.name).exists():
                where = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
            elif not _looks_like_repo_id(self.name):
                where = "no such directory"
            elif _offline():
                where = "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            else:
                where = "not in the local Hugging Face cache and the hub is unreachable"
            # `key` names the setting at fault: eval.clip_model for a run, --clip-model for the CLIs.
            raise UserError(f"{key}={self.name}: cannot load CLIP ({where}); {fetch_hint(self.name, key)}") from exc
        self.max_length = min(77, int(self.model.config.text_config.max_position_embeddings))

    def _features(self, out: Any):
        # transformers 5 returns a model output whose pooler_output is the projected embedding;
        # older versions return the tensor itself.
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def image_embeddings(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32, each row L2-normalised."""
        import torch

        chunks = []
        for start in range(0, len(images), _BATCH):
            batch = [im.convert("RGB") for im in images[start : start + _BATCH]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                chunks.append(self._features(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return _normalise(np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, L2-normalised; texts longer than CLIP's 77 tokens are truncated, as CLIP was trained."""
        import torch

        chunks = []
        for start in range(0, len(texts), _BATCH):
            tokens = self.tokenizer(
                list(texts[start : start + _BATCH]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                chunks.append(self._features(out).float().cpu().numpy())
        return _normalise(np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32))

    def image_file_embeddings(self, paths: Sequence[Path]) -> np.ndarray:
        """Like `image_embeddings`, reading the files a chunk at a time: memory stays bounded for long stories."""
        chunks = [self.image_embeddings([load_image(p) for p in paths[i : i + _BATCH]]) for i in range(0, len(paths), _BATCH)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def story_metrics(
        self, images: Sequence[Image.Image], prompts: Sequence[str], characters: Sequence[tuple[str, ...]]
    ) -> dict[str, Any]:
        if not (len(images) == len(prompts) == len(characters)):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(characters)} character lists")
        return metrics_from_embeddings(self.image_embeddings(images), self.text_embeddings(prompts), characters)


def fetch_hint(name: str | None, key: str) -> str:
    """How to get a CLIP: `hf download` of the one named, else of the recommended one."""
    if name and _looks_like_repo_id(name):
        also = "" if name == DEFAULT_CLIP else f" (recommended: {DEFAULT_CLIP})"
        return f"fetch it once with `hf download {name}`{also} or pass {key}=/local/path"
    return f"fetch the recommended one once with `hf download {DEFAULT_CLIP}` and pass {key}={DEFAULT_CLIP}, or {key}=/local/path"


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).is_absolute()


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mean_pairwise(emb: np.ndarray) -> float | None:
    """Mean cosine over unordered pairs i < j of normalised rows; None with fewer than two rows."""
    n = len(emb)
    if n < 2:
        return None
    sims = emb @ emb.T
    return float(sims[np.triu_indices(n, k=1)].mean())


def metrics_from_embeddings(
    image_emb: np.ndarray, text_emb: np.ndarray, characters: Sequence[tuple[str, ...]]
) -> dict[str, Any]:
    """Metrics from normalised embeddings (row i = frame i).

    clip_t: mean cosine of each frame with its own prompt.
    consistency: per character, mean pairwise cosine of the frames it appears in; averaged over
        characters with at least two frames (None when no character recurs).
    consistency_all: mean pairwise cosine over all frames (useful for untagged one-line-per-frame stories).
    """
    image_emb = _normalise(image_emb)
    text_emb = _normalise(text_emb)
    clip_t = float(np.mean(np.sum(image_emb * text_emb, axis=1))) if len(image_emb) else None
    by_character: dict[str, list[int]] = {}
    for i, names in enumerate(characters):
        for name in dict.fromkeys(names):  # a name tagged twice in one frame still counts that frame once
            by_character.setdefault(name, []).append(i)
    per_character = [v for idx in by_character.values() if (v := _mean_pairwise(image_emb[idx])) is not None]
    return {
        "clip_t": clip_t,
        "consistency": float(np.mean(per_character)) if per_character else None,
        "consistency_all": _mean_pairwise(image_emb),
        "n_frames": int(len(image_emb)),
    }


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read image ({exc})") from exc


def evaluate_render(out_dir: Path, scorer) -> list[dict[str, Any]]:
    """Metrics for every finished iteration of a render directory, without writing anything."""
    out_dir = Path(out_dir)
    results = []
    text_cache: dict[str, np.ndarray] = {}  # prompts repeat across iterations: embed each once
    for it in manifest.finished_iterations_or_fail(out_dir):
        records = manifest.read_records(out_dir, it)
        missing = [p for p in dict.fromkeys(r.prompt for r in records) if p not in text_cache]
        if missing:
            text_cache.update(zip(missing, scorer.text_embeddings(missing)))
        row = metrics_from_embeddings(
            scorer.image_file_embeddings([out_dir / r.image_path for r in records]),
            np.stack([text_cache[r.prompt] for r in records]),
            [r.characters for r in records],
        )
        results.append({"iteration": it, **row})
    return _with_embedding_change(out_dir, results)


def evaluate_render_from_manifest(out_dir: Path) -> list[dict[str, Any]]:
    """Consistency from the embeddings the run already stored (the pipeline's own CLIP image encoder).

    Used when no separate CLIP model is configured: no text tower, so clip_t is None.
    """
    results = []
    for it in manifest.finished_iterations_or_fail(out_dir):
        records = manifest.read_records(out_dir, it)
        emb = _normalise(np.stack([r.embedding for r in records]))
        row = metrics_from_embeddings(emb, emb, [r.characters for r in records])
        results.append({"iteration": it, **row, "clip_t": None})
    return _with_embedding_change(out_dir, results)


def _with_embedding_change(out_dir: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each iteration's mean 1 - cosine to the previous one, from the run's own embeddings (the number
    render.stop_when_stable compares with EPS); None for iteration 0."""
    from ..rundir.convergence import changes

    change = changes(out_dir, [r["iteration"] for r in results])
    return [{**r, "embedding_change": change.get(r["iteration"])} for r in results]


def run_metrics(out_dir: Path, scorer) -> list[dict[str, Any]]:
    """Evaluate every finished iteration and write DIR/metrics.json and DIR/metrics.png.

    `scorer` offers `image_file_embeddings(paths)` and `text_embeddings(texts)`: a ClipScorer here, or the
    render actors' (engine.clip_scorer.ActorClipScorer). With none, consistency comes from the manifest's embeddings
    and clip_t is None.
    """
    out_dir = Path(out_dir)
    results = evaluate_render(out_dir, scorer) if scorer is not None else evaluate_render_from_manifest(out_dir)
    write_json(out_dir / METRICS_JSON, results)
    plot_metrics(results, out_dir / METRICS_PNG)
    return results


def write_json(path: Path, payload: Any) -> Path:
    """Atomic: readers (the gallery, a user's notebook) never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


_CURVES = (("clip_t", "CLIP-T (image-prompt)"), ("consistency", "consistency (same character)"), ("consistency_all", "consistency (all frames)"))


def plot_metrics(results: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    iterations = [r["iteration"] for r in results]
    for key, label in _CURVES:
        pts = [(i, r[key]) for i, r in zip(iterations, results) if r.get(key) is not None and math.isfinite(r[key])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cosine similarity")
    ax.set_xticks(iterations)
    ax.grid(alpha=0.3)
    changes = [(i, r["embedding_change"]) for i, r in zip(iterations, results) if r.get("embedding_change") is not None]
    if changes:  # another unit (1 - cosine, small): its own axis on the right
        right = ax.twinx()
        xs, ys = zip(*changes)
        right.plot(xs, ys, marker="s", linestyle="--", color="tab:red", label="embedding change (1 - cos to previous)")
        right.set_ylabel("embedding change")
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = right.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title("Story-Adapter refinement")
    fig.tight_layout()
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def format_table(results: Sequence[dict[str, Any]], first: str = "iteration") -> str:
    """A small fixed-width table for terminals."""
    cols = [first, "n_frames", "clip_t", "consistency", "consistency_all", "embedding_change"]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    rows = [cols] + [[cell(r.get(c)) for c in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)
