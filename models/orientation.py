"""Images upright, as their EXIF orientation says: how viewers and annotation tools show a
photo and what its annotations refer to (a camera often stores a portrait photo as landscape
pixels and an orientation tag). The service's decoder and training's loader both turn images
this way, so a photo is the same picture in training and in serving.
"""

from PIL import ExifTags, Image, ImageOps

# EXIF orientations that turn the image by a quarter (with or without a flip): width and
# height trade places.
_QUARTER_TURNS = (5, 6, 7, 8)


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says, as viewers and annotation tools show it
    and as annotations refer to it (the stored pixels are often a camera's sideways view)."""
    return ImageOps.exif_transpose(image)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of `upright(image)`. Reads the EXIF of a JPEG from its header; a PNG
    may be decoded to find its EXIF, after which `image.verify()` is no longer possible."""
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)
