"""Pictures that callers send or get: read the header of an upload (never decoding a bomb) and write results."""

from __future__ import annotations

import io
from pathlib import Path

from tiqo.core.errors import BadRequest


def check_pictures(image: bytes, mask: bytes | None, largest: int) -> tuple[int, int]:
    """The upload is an image (header read only; a decompression bomb never decodes), and the mask matches it.
    Returns the image's size."""
    from PIL import Image, UnidentifiedImageError

    sizes = []
    for name, data in (("image", image), ("mask", mask)):
        if data is None:
            continue
        try:
            with Image.open(io.BytesIO(data)) as picture:
                sizes.append(picture.size)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise BadRequest(
                f"the {name} is not an image PIL can read ({exc})", param=name, hint="send a PNG, JPEG or WebP file"
            ) from None
        width, height = sizes[-1]
        if max(width, height) > largest:
            raise BadRequest(
                f"the {name} is {width}x{height}; the largest side allowed is {largest} (image.max_side)", param=name
            )
    if len(sizes) == 2 and sizes[0] != sizes[1]:
        raise BadRequest(
            f"the mask is {sizes[1][0]}x{sizes[1][1]} but the image is {sizes[0][0]}x{sizes[0][1]}",
            param="mask",
            hint="make the mask the same size as the image (white where it is repainted)",
        )
    return sizes[0]


def save_pictures(pictures: list[bytes], fmt: str, folder: Path) -> list[str]:
    """Write the PNGs into ``folder`` as image-0.FMT, image-1.FMT … (converted when FMT is jpeg or webp)."""
    names = []
    for i, png in enumerate(pictures):
        data = png
        if fmt != "png":
            from PIL import Image

            with Image.open(io.BytesIO(png)) as picture:
                buf = io.BytesIO()
                picture.convert("RGB").save(buf, format=fmt.upper())
                data = buf.getvalue()
        name = f"image-{i}.{fmt}"
        (folder / name).write_bytes(data)
        names.append(name)
    return names
