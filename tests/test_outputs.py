"""Outputs people look at (comic, GIF, contact sheet, index) and evaluation, from synthetic render dirs."""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from storyadapter.outputs import comic, gallery
from storyadapter.rundir import manifest
from storyadapter.models.tiny_clip import build_tiny_clip
from storyadapter.outputs.write import write_all

from .helpers import REPO
from .helpers.renders import make_render_dir

LONG_CAPTION = (
    "After the storm, Mila climbs the hill behind the village with her lantern & the old map <b>drawn</b> by "
    "her grandmother, counting the stars that fall into the sea while the owl circles twice, hoots, and "
    "finally lands on the broken fence post beside the garden gate where the glowing seed was buried "
    "three nights ago; nobody in the village believes her, but tonight the seed has split and a thin "
    "silver stem is reaching for the moon, and she knows that by morning everything will have changed "
    "for good, for the owl, for the village, and for the little girl in the yellow raincoat."
)
EVIL_CAPTION = '<script>alert("x")</script> & "quotes" \'single\''


def run_cli(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env_vars}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny_clip) -> Path:
    """24 frames, 2 iterations, with every output written by write_all (what the launcher calls)."""
    out = make_render_dir(tmp_path_factory.mktemp("render") / "run", 24, captions={4: LONG_CAPTION, 7: EVIL_CAPTION})
    write_all(out, str(tiny_clip))
    return out


# ---------------------------------------------------------------- tiny CLIP


def test_tiny_clip_loads_offline_and_is_deterministic(tiny_clip, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(tiny_clip)
    assert CLIPTokenizer.from_pretrained(tiny_clip)("a red fox")["input_ids"][0] == 49406
    assert CLIPImageProcessor.from_pretrained(tiny_clip) is not None
    again = CLIPModel.from_pretrained(build_tiny_clip(tmp_path / "again"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
    stamp = (tiny_clip / "model.safetensors").stat().st_mtime_ns
    build_tiny_clip(tiny_clip)  # complete: not rebuilt
    assert (tiny_clip / "model.safetensors").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------- comic


@pytest.mark.parametrize(
    "n_frames,expected",
    [(5, {"classic": 1, "four": 2, "single": 5}), (24, {"classic": 4, "four": 6, "single": 24}), (104, {"classic": 18, "four": 26, "single": 104})],
)
def test_comic_page_counts(tmp_path, n_frames, expected):
    out = make_render_dir(tmp_path / "run", n_frames, iterations=1)
    for layout, pages in expected.items():
        written = comic.write_comic(out, layout=layout)
        assert len(written) == pages
        on_disk = sorted(p.name for p in (out / "comic").glob("page_*.png"))
        digits = 3 if pages > 99 else 2
        assert on_disk == [f"page_{i:0{digits}d}.png" for i in range(1, pages + 1)]  # stale pages removed
        with Image.open(written[0]) as im:
            assert min(im.size) >= 256


def _frames_on_pages(pages: list[comic.PageLayout]) -> list[int]:
    return sorted(p.slot for page in pages for p in page.panels)


@pytest.mark.parametrize("layout", comic.LAYOUTS)
@pytest.mark.parametrize("position", comic.CAPTION_POSITIONS)
@pytest.mark.parametrize("frame_size", [(64, 64), (1024, 768), (512, 896)])
def test_long_captions_wrap_inside_panel_and_page(layout, position, frame_size):
    giant_word = "x" * 300  # e.g. a pasted URL: must be broken, not overflow
    captions = [f"Short caption {i}." if i % 2 else "" for i in range(7)]
    captions[2] = LONG_CAPTION
    captions[5] = giant_word
    pages = comic.layout_pages(captions, frame_size, layout, position)
    assert _frames_on_pages(pages) == list(range(7))
    for page in pages:
        for p in page.panels:
            assert page.box.contains(p.panel)
            assert p.panel.contains(p.image)
            assert p.image.width >= 256 - 8 and abs(p.image.height / p.image.width - frame_size[1] / frame_size[0]) < 0.01
            if not captions[p.slot]:
                assert p.caption is None and not p.lines
                continue
            # Never cut off: every character of the caption is on some line.
            assert "".join("".join(p.lines).split()) == "".join(captions[p.slot].split())
            assert p.font_size >= 12
            for box in p.line_boxes:
                assert p.caption.contains(box), (box, p.caption)
                assert p.panel.contains(box) and page.box.contains(box)
            assert not (p.caption.y0 < p.image.y1 and p.image.y0 < p.caption.y1)  # text never over the picture
        # Panels do not overlap.
        boxes = [p.panel for p in page.panels]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0


def test_long_caption_drawn_on_page(rendered):
    # Frame 4 carries the long caption; its page was drawn with the laid-out lines inside the page.
    page = comic.layout_pages([r.caption for r in manifest.read_records(rendered, 1)], (64, 64))[0]
    panel = next(p for p in page.panels if p.slot == 4)
    assert len(panel.lines) > 5
    with Image.open(rendered / "comic" / "page_01.png") as im:
        assert im.size == (page.width, page.height)
        ink = np.asarray(im.convert("L").crop((panel.caption.x0, panel.caption.y0, panel.caption.x1, panel.caption.y1)))
    assert (ink < 100).mean() > 0.02  # text was actually drawn in the caption box


def test_bad_layout_is_a_user_error():
    from storyadapter.errors import UserError

    with pytest.raises(UserError, match="layout"):
        comic.layout_pages(["a"], (64, 64), "manga")


# ---------------------------------------------------------------- gallery


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for key, value in attrs:
            if key in ("href", "src") and value is not None:
                self.links.append(value)
            if key == "id":
                self.ids.add(value)


def test_index_links_are_relative_and_exist(rendered):
    text = (rendered / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    assert "script" not in parser.tags and "<script>alert" not in text  # user captions are escaped
    assert "&lt;script&gt;alert" in text
    assert not any(t in text for t in ("http://", "https://"))
    targets = set(parser.links)
    for needed in ("story.gif", "iterations.png", "metrics.json", "comic/page_01.png", "iter_01/frame_0023.png", "iter_00/frame_0000.png"):
        assert needed in targets
    for link in parser.links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, link
        if link.startswith("#"):
            assert link[1:] in parser.ids, link
            continue
        assert not link.startswith("/"), link
        assert (rendered / unquote(parts.path)).is_file(), link


def test_gif_has_one_frame_per_story_frame(rendered):
    with Image.open(rendered / "story.gif") as gif:
        assert gif.n_frames == 24
        assert gif.info["duration"] == 1000
        assert min(gif.size) >= 256


def test_contact_sheet_size(rendered, tmp_path):
    rows, cols = 2, 8
    with Image.open(rendered / "iterations.png") as sheet:
        assert sheet.size == (
            gallery.LABEL_W + cols * (gallery.THUMB + gallery.GAP) + gallery.GAP,
            gallery.HEADER_H + rows * (gallery.THUMB + gallery.GAP) + gallery.GAP,
        )
    assert gallery.sample_columns(24, 8)[0] == 0 and gallery.sample_columns(24, 8)[-1] == 23
    few = make_render_dir(tmp_path / "few", 5, iterations=3, size=(96, 64))
    with Image.open(gallery.write_contact_sheet(few)) as sheet:
        assert sheet.size == gallery.contact_sheet_size(3, 5, (96, 64))


# ---------------------------------------------------------------- metrics and eval


def test_metrics_json_one_entry_per_iteration(rendered):
    rows = json.loads((rendered / "metrics.json").read_text())
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert r["n_frames"] == 24
        for key in ("clip_t", "consistency", "consistency_all"):
            assert math.isfinite(r[key]) and -1.0 <= r[key] <= 1.0
    assert (rendered / "metrics.png").is_file()


def test_consistency_definition():
    from storyadapter.outputs.metrics import metrics_from_embeddings

    img = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    txt = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], np.float32)
    m = metrics_from_embeddings(img, txt, [("A",), ("A",), ("B",), ()])
    assert m["clip_t"] == pytest.approx(0.75)
    assert m["consistency"] == pytest.approx(1.0)  # only A recurs, and its two frames are identical
    assert m["consistency_all"] == pytest.approx(2 / 6)
    assert metrics_from_embeddings(img, txt, [("A",), ("B",), (), ()])["consistency"] is None


def test_eval_cli_on_render_dir_matches_run(rendered, tiny_clip, tmp_path):
    out = tmp_path / "eval.json"
    proc = run_cli("storyadapter.outputs.eval", str(rendered), "--clip-model", str(tiny_clip), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "clip_t" in proc.stdout
    ran = json.loads((rendered / "metrics.json").read_text())
    evaluated = json.loads(out.read_text())
    assert len(ran) == len(evaluated)
    for a, b in zip(ran, evaluated):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, abs=1e-6), key


def test_eval_cli_on_image_folder_with_story(tmp_path, tiny_clip):
    from storyadapter.outputs.metrics import ClipScorer, evaluate_render
    from storyadapter.story.parse import load_story

    story_file = tmp_path / "story.txt"
    story_file.write_text(
        "[Ana] A tall chef with curly red hair.\n[Ben] A rider with a blue helmet.\n\n"
        "[Ana] chops vegetables #Ana cooks.\n[Ben] rides through rain #Ben rides.\n"
        "[Ana] and [Ben] share soup #Together.\n[NC] An empty street at night\n[Ana] waves goodbye\n",
        encoding="utf-8",
    )
    story = load_story(story_file)
    render = make_render_dir(
        tmp_path / "run", len(story.frames), iterations=1,
        prompts=[f.prompt for f in story.frames], characters=[tuple(f.characters) for f in story.frames],
    )
    folder = tmp_path / "baseline"
    folder.mkdir()
    for f in range(len(story.frames)):  # unpadded names: natural order must put 2 before 10
        shutil.copy(render / "iter_00" / manifest.frame_filename(f), folder / f"img{f}.png")
    out = tmp_path / "folder.json"
    proc = run_cli("storyadapter.outputs.eval", str(folder), "--story", str(story_file), "--clip-model", str(tiny_clip), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(out.read_text())
    [expected] = evaluate_render(render, ClipScorer(str(tiny_clip)))
    assert row["n_frames"] == len(story.frames)
    for key in ("clip_t", "consistency", "consistency_all"):
        assert row[key] == pytest.approx(expected[key], abs=1e-6)


def test_cli_bad_inputs_are_one_line(tmp_path, tiny_clip):
    story_file = tmp_path / "story.txt"
    story_file.write_text("a fox\na hen\na dog\n", encoding="utf-8")
    story_two = tmp_path / "two.txt"
    story_two.write_text("a fox\na hen\n", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (i * 90, 0, 0)).save(two / f"{i}.png")
    no_parts = tmp_path / "no_parts"
    (no_parts / "manifest").mkdir(parents=True)
    clip = ["--clip-model", str(tiny_clip)]
    cases = [
        ("storyadapter.outputs.eval", str(tmp_path / "missing"), "--story", str(story_file), *clip),
        ("storyadapter.outputs.eval", str(empty), "--story", str(story_file), *clip),
        ("storyadapter.outputs.eval", str(two), "--story", str(story_file), *clip),
        ("storyadapter.outputs.eval", str(two), *clip),
        ("storyadapter.outputs.eval", str(no_parts), *clip),
        ("storyadapter.outputs.eval", str(two), "--story", str(story_two), "--clip-model", str(tmp_path / "no-such-clip")),
        ("storyadapter.outputs.eval", str(two), "--story", str(story_two), "--clip-model", "openai/clip-not-downloaded"),
        ("storyadapter.outputs", str(tmp_path / "missing")),
        ("storyadapter.outputs", str(no_parts)),
        ("storyadapter.outputs.eval", str(two)),  # bad command lines too: one line, not argparse's usage block
        ("storyadapter.outputs", str(no_parts), "--layout", "diagonal"),
    ]
    for args in cases:
        proc = run_cli(*args)
        assert_one_line_error(proc)
        if args[-1].endswith(("no-such-clip", "clip-not-downloaded")):
            assert "--clip-model=" in proc.stderr and "`hf download " in proc.stderr and "huggingface-cli" not in proc.stderr
    assert not any(empty.iterdir()) and sorted(p.name for p in two.iterdir()) == ["0.png", "1.png"]  # nothing written


def test_eval_without_a_clip_scores_a_render_from_its_own_embeddings_and_keeps_its_metrics(tmp_path):
    out = make_render_dir(tmp_path / "run", n_frames=6, iterations=2)
    write_all(out, None)
    expected = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text("the run's own\n")  # e.g. with a CLIP-T: a run without CLIP must not replace it
    proc = run_cli("storyadapter.outputs.eval", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["iteration", "n_frames", "clip_t", "consistency", "consistency_all",
                                                   "embedding_change"]
    assert len(proc.stdout.splitlines()) == 3 and "--json" in proc.stderr
    assert (out / "metrics.json").read_text() == "the run's own\n"
    proc = run_cli("storyadapter.outputs.eval", str(out), "--json", str(tmp_path / "own.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "own.json").read_text()) == expected  # what the launcher writes without eval.clip_model


def test_eval_names_the_recommended_clip_and_how_to_fetch_it(tmp_path):
    from storyadapter.outputs.metrics import DEFAULT_CLIP

    assert DEFAULT_CLIP == "openai/clip-vit-large-patch14"
    helptext = " ".join(run_cli("storyadapter.outputs.eval", "--help").stdout.split())
    assert f"recommended: {DEFAULT_CLIP}" in helptext and f"`hf download {DEFAULT_CLIP}`" in helptext
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "0.png")
    story = tmp_path / "story.txt"
    story.write_text("a fox\n", encoding="utf-8")
    proc = run_cli("storyadapter.outputs.eval", str(folder), "--story", str(story))  # a folder has no embeddings
    assert_one_line_error(proc)
    assert proc.stderr.startswith("error: --clip-model: ") and f"`hf download {DEFAULT_CLIP}`" in proc.stderr
    for name in (DEFAULT_CLIP, "someone/clip-not-downloaded"):  # offline and not in the (empty) cache
        proc = run_cli("storyadapter.outputs.eval", str(folder), "--story", str(story), "--clip-model", name,
                       HF_HUB_CACHE=str(tmp_path / "empty-cache"))
        assert_one_line_error(proc)
        assert f"--clip-model={name}: cannot load CLIP" in proc.stderr and f"`hf download {name}`" in proc.stderr
        assert DEFAULT_CLIP in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["0.png"]


def test_comic_cli_regenerates_outputs(tmp_path):
    out = make_render_dir(tmp_path / "run", 5)
    proc = run_cli("storyadapter.outputs", str(out), "--layout", "four", "--caption-position", "above")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "comic").iterdir()) == ["page_01.png", "page_02.png"]
    for name in ("story.gif", "iterations.png", "index.html"):
        assert (out / name).is_file()
    assert not (out / "metrics.json").exists()  # no CLIP given: no metrics


def test_without_eval_clip_consistency_comes_from_the_runs_own_embeddings(tmp_path):
    out = make_render_dir(tmp_path / "run", n_frames=6, iterations=2)
    write_all(out, None)
    results = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in results] == [0, 1]
    for row in results:
        emb = manifest.read_bank(out, row["iteration"])
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        sims = emb @ emb.T
        assert row["clip_t"] is None
        assert row["consistency_all"] == pytest.approx(sims[np.triu_indices(6, k=1)].mean(), abs=1e-6)
    assert (out / "metrics.png").is_file() and (out / "index.html").is_file()


# ---------------------------------------------------------------- what the frames are (notice.py)


def write_config(out: Path, kind: str) -> Path:
    """The part of config.yaml the outputs read, as the launcher writes it."""
    (out / "config.yaml").write_text(f"model:\n  name: {kind}\n  kind: {kind}\nmethod:\n  name: story_adapter\n", encoding="utf-8")
    return out


def frame_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("iter_*/frame_*.png"))}


def test_frames_that_are_not_pictures_say_so_in_the_gallery_and_on_the_first_comic_page(tmp_path):
    from storyadapter.outputs.notice import RANDOM_WEIGHTS, SIMULATED

    assert RANDOM_WEIGHTS == "random weights: these frames are noise; see README 'Real weights'"
    plain = make_render_dir(tmp_path / "realvisxl", 8)  # 8 frames: two classic pages
    write_all(write_config(plain, "hub"), None)
    with Image.open(plain / "comic" / "page_01.png") as im:
        plain_page = np.asarray(im.convert("RGB"))
    index = (plain / "index.html").read_text(encoding="utf-8")
    assert "random weights" not in index and "simulated frames" not in index and 'class="notice"' not in index
    pages = comic.layout_pages([r.caption for r in manifest.read_records(plain, 1)], (64, 64))
    assert plain_page.shape[:2] == (pages[0].height, pages[0].width)  # a real model's page: no band

    for kind, notice in (("tiny", RANDOM_WEIGHTS), ("sdxl-random", RANDOM_WEIGHTS), ("sim", SIMULATED)):
        out = write_config(make_render_dir(tmp_path / kind, 8), kind)  # the same frames as `plain`
        frames = frame_bytes(out)
        write_all(out, None)
        assert frame_bytes(out) == frames
        index = (out / "index.html").read_text(encoding="utf-8")
        assert index.count(f'<p class="notice" id="notice">{html.escape(notice, quote=True)}</p>') == 1, kind
        with Image.open(out / "comic" / "page_01.png") as im:
            page = np.asarray(im.convert("RGB"))
        band = page.shape[0] - plain_page.shape[0]
        assert band > 0 and page.shape[1] == plain_page.shape[1]
        assert np.array_equal(page[band:], plain_page)  # the page itself is untouched, below the band
        assert (page[:band].min(axis=2) < 120).mean() > 0.01  # the band carries text
        for name in ("page_02.png", "../story.gif", "../iterations.png"):  # only the first page carries it
            assert (out / "comic" / name).read_bytes() == (plain / "comic" / name).read_bytes(), (kind, name)


def test_the_outputs_command_reads_the_notice_from_the_render_s_config(tmp_path):
    out = write_config(make_render_dir(tmp_path / "run", 3), "tiny")
    proc = run_cli("storyadapter.outputs", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "random weights: these frames are noise; see README &#x27;Real weights&#x27;" in (out / "index.html").read_text()
    write_config(out, "hub")
    assert run_cli("storyadapter.outputs", str(out)).returncode == 0
    assert "random weights" not in (out / "index.html").read_text()
    pages = comic.layout_pages([r.caption for r in manifest.read_records(out, 1)], (64, 64))
    with Image.open(out / "comic" / "page_01.png") as im:
        assert im.size == (pages[0].width, pages[0].height)  # regenerated without the band


def test_the_makefile_demo_ends_with_the_notice_of_the_model_it_renders():
    from storyadapter.outputs.notice import RANDOM_WEIGHTS

    recipe = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()
    assert "model=tiny" in "\n".join(recipe)
    assert recipe[-1].strip() == f'@echo "{RANDOM_WEIGHTS}"'
