"""Image files of every kind the loader must handle, written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_images
from PIL import Image


def rgb_array(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return (make_images(1, height, width, seed=seed)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Good files in many modes, plus broken ones; names say what each is."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rgb_array()
    files = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        files[name] = folder / name
        image.save(files[name], **kwargs)

    save("rgb.png", Image.fromarray(rgb))
    save("photo.jpg", Image.fromarray(rgb), quality=90)
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("gray_alpha.png", Image.fromarray(rgb).convert("LA"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    deep = (np.linspace(0, 65535, rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2])).astype(np.uint16)
    save("deep16.png", Image.fromarray(deep))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("rotated.jpg", Image.fromarray(rgb), exif=exif, quality=95)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(files["photo.jpg"].read_bytes()[:600])
    files["truncated.jpg"] = truncated
    fake = folder / "not_an_image.png"
    fake.write_text("this is text, not pixels")
    files["not_an_image.png"] = fake
    return files
