import numpy as np
import pytest
from PIL import ExifTags, Image

from models.orientation import upright, upright_size


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_upright_size_is_the_size_of_the_upright_image(tmp_path, suffix, orientation):
    path = tmp_path / f"image{suffix}"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path, exif=exif)
    with Image.open(path) as image:
        size = upright_size(image)
    with Image.open(path) as image:
        assert upright(image).size == size
    assert size == ((10, 20) if orientation >= 5 else (20, 10))
