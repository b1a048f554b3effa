"""Style templates: wrap a frame prompt in a style's positive text and pick its negative prompt.

The first nine are StoryDiffusion's style list (HVision-NKU/StoryDiffusion, utils/style_template.py),
retyped so the same story renders in the same styles as there. The last three are
Story-Adapter's (comic, film, realistic), worded exactly as upstream builds them (StoryAdapterXL.generate in
ip_adapter/ip_adapter.py: the comic one live, film commented beside it), so `render=paper`
reproduces upstream's prompts as well as its sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

from storyadapter.errors import UserError

DEFAULT_STYLE = "(No style)"


@dataclass(frozen=True)
class Style:
    name: str
    prompt_template: str  # contains "{prompt}" exactly where the frame prompt goes
    negative_prompt: str

    def apply(self, prompt: str) -> tuple[str, str]:
        # str.replace, not str.format: prompts may legitimately contain braces.
        return self.prompt_template.replace("{prompt}", prompt), self.negative_prompt


# StoryDiffusion appends this generic quality list to most of its negatives; spelled once here.
_SD_BAD = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry"
)
_SD_NOT_PAINTED = (
    "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, off-center, deformed, "
    "cross-eyed, closed eyes, bad anatomy, ugly, disfigured, mutated, realism, realistic, "
    "impressionism, expressionism, oil, acrylic"
)

_STORY_ADAPTER_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"

_STYLES: tuple[Style, ...] = (
    Style(DEFAULT_STYLE, "{prompt}", ""),
    Style(
        "Japanese Anime",
        "anime artwork illustrating {prompt}. created by japanese anime studio. highly emotional. "
        "best quality, high resolution, (Anime Style, Manga Style:1.3), Low detail, sketch, "
        "concept art, line art, webtoon, manhua, hand drawn, defined lines, simple shades, "
        "minimalistic, High contrast, Linear compositions, Scalable artwork, Digital art, "
        "High Contrast Shadows",
        _SD_BAD,
    ),
    Style(
        "Digital/Oil Painting",
        "{prompt} . (Extremely Detailed Oil Painting:1.2), glow effects, godrays, Hand drawn, "
        "render, 8k, octane render, cinema 4d, blender, dark, atmospheric 4k ultra detailed, "
        "cinematic sensual, Sharp focus, humorous illustration, big depth of field",
        "anime, cartoon, graphic, text, painting, crayon, graphite, abstract, glitch, deformed, "
        "mutated, ugly, disfigured, " + _SD_BAD,
    ),
    Style(
        "Pixar/Disney Character",
        "Create a Disney Pixar 3D style illustration on {prompt} . The scene is vibrant, "
        "motivational, filled with vivid colors and a sense of wonder.",
        "lowres, bad anatomy, bad hands, text, bad eyes, bad arms, bad legs, error, missing fingers, "
        "extra digit, fewer digits, cropped, worst quality, low quality, normal quality, "
        "jpeg artifacts, signature, watermark, blurry, grayscale, noisy, sloppy, messy, grainy, "
        "highly detailed, ultra textured, photo",
    ),
    Style(
        "Photographic",
        "cinematic photo {prompt} . Hyperrealistic, Hyperdetailed, detailed skin, matte skin, "
        "soft lighting, realistic, best quality, ultra realistic, 8k, golden ratio, Intricate, "
        "High Detail, film photography, soft focus",
        "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, "
        "deformed, ugly, " + _SD_BAD,
    ),
    Style(
        "Comic book",
        "comic {prompt} . graphic illustration, comic art, graphic novel art, vibrant, highly detailed",
        "photograph, deformed, glitch, noisy, realistic, stock photo, " + _SD_BAD,
    ),
    Style(
        "Line art",
        "line art drawing {prompt} . professional, sleek, modern, minimalist, graphic, line art, "
        "vector graphics",
        _SD_NOT_PAINTED + ", " + _SD_BAD,
    ),
    Style(
        "Black and White Film Noir",
        "{prompt} . (b&w, Monochromatic, Film Photography:1.3), film noir, analog style, "
        "soft lighting, subsurface scattering, realistic, heavy shadow, masterpiece, best quality, "
        "ultra realistic, 8k",
        _SD_NOT_PAINTED + ", " + _SD_BAD,
    ),
    Style(
        "Isometric Rooms",
        "Tiny cute isometric {prompt} . in a cutaway box, soft smooth lighting, soft colors, "
        "100mm lens, 3d blender render",
        _SD_NOT_PAINTED + ", " + _SD_BAD,
    ),
    # Story-Adapter's three, as upstream writes them (one shared negative).
    Style(
        "comic",
        "best quality, high quality, comic {prompt} . graphic illustration, comic art, graphic novel art, "
        "vibrant, highly detailed",
        _STORY_ADAPTER_NEGATIVE,
    ),
    Style(
        "film",
        "best quality, high quality, cinematic film still, {prompt} . shallow depth of field, vignette, "
        "highly detailed, high budget, bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy",
        _STORY_ADAPTER_NEGATIVE,
    ),
    Style("realistic", "best quality, high quality, {prompt}", _STORY_ADAPTER_NEGATIVE),
)

_BY_KEY: dict[str, Style] = {s.name.casefold(): s for s in _STYLES}
# Spellings people type for "no style"; None means "not set" and also lands here.
_ALIASES = {"no style": DEFAULT_STYLE, "none": DEFAULT_STYLE, "": DEFAULT_STYLE}


def style_names() -> list[str]:
    """Canonical style names, in display order."""
    return [s.name for s in _STYLES]


def get_style(name: str | None) -> Style:
    """Look a style up case-insensitively; unknown names raise UserError listing the valid ones."""
    if name is None:
        return _BY_KEY[DEFAULT_STYLE.casefold()]
    if not isinstance(name, str):
        raise UserError(f"style must be a string, got {type(name).__name__}")
    key = " ".join(name.split()).casefold()  # forgive stray/double spaces
    key = _ALIASES.get(key, key).casefold()
    style = _BY_KEY.get(key)
    if style is None:
        valid = ", ".join(repr(n) for n in style_names())
        raise UserError(f"unknown style {name!r}; valid styles: {valid}")
    return style
