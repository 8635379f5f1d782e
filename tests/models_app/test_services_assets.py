import io

import pytest
from django.conf import settings
from PIL import Image

from models_app.errors import InvalidInput
from models_app.models import Asset, TrainingImage
from models_app.services.assets import asset_create, image_verify
from models_app.services.datasets import training_image_add
from tests.factories import ModelFactory, TeamFactory
from tests.helpers import media_files

pytestmark = pytest.mark.django_db


def png_bytes(size: tuple[int, int] = (96, 80), colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_real_image_is_stored_under_its_true_extension() -> None:
    team = TeamFactory()
    content = png_bytes()
    asset = asset_create(team=team, content=content, name="photo.jpg")  # named .jpg, really a PNG
    assert (asset.format, asset.width, asset.height, asset.size_bytes) == ("PNG", 96, 80, len(content))
    assert asset.file.name.endswith(".png")
    assert asset.public_id.startswith("asset_") and len(asset.public_id) == len("asset_") + 22
    with asset.file.open("rb") as stored:
        assert stored.read() == content


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not a picture", "not an image"),
        (b"", "is empty"),
        (png_bytes()[:60], "damaged or truncated"),
    ],
)
def test_a_non_image_upload_to_a_model_leaves_no_row_and_no_file(content: bytes, message: str) -> None:
    model = ModelFactory()
    with pytest.raises(InvalidInput, match=message) as raised:
        training_image_add(model=model, content=content, name="fake.png")
    assert "'fake.png'" in raised.value.message
    assert raised.value.field == "file"
    assert Asset.objects.count() == 0
    assert TrainingImage.objects.count() == 0
    assert media_files(settings.MEDIA_ROOT) == []


def test_formats_outside_the_accepted_list_are_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 80)).save(buffer, format="BMP")
    with pytest.raises(InvalidInput, match="BMP image; accepted formats: JPEG, PNG, WEBP"):
        image_verify(content=buffer.getvalue(), name="x.bmp")


def test_oversized_and_decompression_bomb_images_are_refused(settings) -> None:
    settings.IMAGE_MAX_BYTES = 100
    with pytest.raises(InvalidInput, match="images may be at most 100 bytes"):
        image_verify(content=png_bytes(), name="big.png")
    settings.IMAGE_MAX_BYTES = 10_000_000
    settings.IMAGE_MAX_PIXELS = 1000
    with pytest.raises(InvalidInput, match="96x80 pixels; images may have at most 1000 pixels"):
        image_verify(content=png_bytes(), name="many-pixels.png")


def test_a_too_small_training_image_is_refused_and_cleaned_up() -> None:
    model = ModelFactory()
    with pytest.raises(InvalidInput, match="each side of a training image must be at least 64 pixels"):
        training_image_add(model=model, content=png_bytes((32, 200)), name="thin.png")
    assert Asset.objects.count() == 0
    assert media_files(settings.MEDIA_ROOT) == []


def test_a_truncated_jpeg_is_refused(tmp_path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((640, 480), 60).convert("RGB").save(buffer, format="JPEG", quality=90)
    whole = buffer.getvalue()
    image_verify(content=whole, name="whole.jpg")
    with pytest.raises(InvalidInput, match=r"'cut\.jpg' is a damaged or truncated image"):
        image_verify(content=whole[: len(whole) * 2 // 3], name="cut.jpg")
