"""Draws storyadapter/examples/tom.png, the example character photo: a generated cartoon portrait (PIL
shapes only, no source image), so it is free of any licence. Run it again to reproduce the file."""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "storyadapter" / "examples" / "tom.png"


def draw() -> Image.Image:
    im = Image.new("RGB", (160, 160), (150, 200, 235))  # sky
    d = ImageDraw.Draw(im)
    d.rectangle((0, 130, 160, 160), fill=(90, 160, 80))  # grass
    d.polygon([(30, 160), (50, 112), (110, 112), (130, 160)], fill=(240, 200, 40))  # yellow raincoat
    d.ellipse((48, 40, 112, 112), fill=(245, 205, 170))  # face
    d.pieslice((44, 22, 116, 86), 180, 360, fill=(200, 30, 30))  # red cap
    d.rectangle((80, 50, 124, 56), fill=(170, 20, 20))  # its peak
    for x in (66, 90):
        d.ellipse((x, 68, x + 8, 76), fill=(40, 40, 40))  # eyes
    d.arc((66, 80, 96, 100), 20, 160, fill=(150, 50, 50), width=3)  # smile
    return im


if __name__ == "__main__":
    with open(OUT, "wb") as fh:
        draw().save(fh, format="PNG", optimize=True)
    print(OUT)
