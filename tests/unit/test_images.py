"""dspo.images: upload decoding (with broken and hostile files), encoding, degradation, crops, masks."""

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from dspo.images import (
    ImageRejected,
    decode_upload,
    degrade,
    encode_png,
    mask_to_png,
    png_to_mask,
    render_instance_crop,
    sha256_hex,
    upsample,
)

LIMIT = 40_000_000


def save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_bilevel_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of any size, written row block by row block (about 100 KB for 30000²)."""
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts += [compressor.compress(row * (height % 1000)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


# --- decode_upload: what it accepts ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP"])
def test_decodes_allowed_formats_to_rgb(chelsea: Image.Image, fmt: str) -> None:
    img = decode_upload(save(chelsea, fmt), max_pixels=LIMIT)
    assert img.mode == "RGB" and img.size == chelsea.size
    if fmt in ("PNG", "TIFF", "BMP"):
        assert np.array_equal(np.asarray(img), np.asarray(chelsea))


def test_rgba_is_composited_on_white() -> None:
    pixels = np.zeros((8, 10, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[:, :5, 3] = 255  # left half opaque red-ish, right half fully transparent
    img = decode_upload(save(Image.fromarray(pixels), "PNG"), max_pixels=LIMIT)
    out = np.asarray(img)
    assert img.mode == "RGB"
    assert (out[:, :5] == [200, 0, 0]).all()
    assert (out[:, 5:] == [255, 255, 255]).all()


def test_palette_with_transparency_and_bilevel_and_cmyk() -> None:
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 0
    assert (np.asarray(decode_upload(save(palette, "PNG"), max_pixels=LIMIT)) == [10, 20, 30]).all()
    bilevel = Image.new("1", (6, 4), 1)
    assert (np.asarray(decode_upload(save(bilevel, "PNG"), max_pixels=LIMIT)) == 255).all()
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))
    out = np.asarray(decode_upload(save(cmyk, "JPEG", quality=95), max_pixels=LIMIT))
    assert out[..., 0].min() > 200 and out[..., 1:].max() < 60  # red


def test_sixteen_bit_grey_is_scaled_to_eight_bits() -> None:
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    img16 = Image.fromarray(ramp)
    assert img16.mode.startswith("I;16")
    out = np.asarray(decode_upload(save(img16, "PNG"), max_pixels=LIMIT))
    assert out.shape == (8, 8, 3)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] >= 254


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = [255, 0, 0]  # left half red, right half blue
    pixels[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    raw = save(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)
    img = decode_upload(raw, max_pixels=LIMIT)
    assert img.size == (20, 40)  # portrait after rotation
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[2] < 60  # red came to the top
    assert bottom[2] > 200 and bottom[0] < 60


def swapped_rgb_profile() -> bytes:
    """Pillow's sRGB profile with the red and blue primaries swapped, renamed: a non-sRGB RGB profile."""
    from PIL import ImageCms

    raw = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", raw[128:132])[0]
    entries = {bytes(raw[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    raw[red + 4 : red + 12], raw[blue + 4 : blue + 12] = raw[blue + 4 : blue + 12], raw[red + 4 : red + 12]
    return bytes(raw).replace("sRGB".encode("utf-16-be"), "swap".encode("utf-16-be"))


def test_embedded_colour_profiles_are_converted_to_srgb() -> None:
    from PIL import ImageCms

    image = Image.new("RGB", (8, 6), (200, 30, 10))
    converted = decode_upload(save(image, "PNG", icc_profile=swapped_rgb_profile()), max_pixels=LIMIT)
    assert converted.getpixel((0, 0)) == (10, 30, 200)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert decode_upload(save(image, "PNG", icc_profile=srgb), max_pixels=LIMIT).getpixel((0, 0)) == (
        200,
        30,
        10,
    )
    garbage = decode_upload(save(image, "PNG", icc_profile=b"not a profile"), max_pixels=LIMIT)
    assert garbage.getpixel((0, 0)) == (200, 30, 10)


# --- decode_upload: what it refuses --------------------------------------------------------------


def test_rejects_empty_and_non_images() -> None:
    with pytest.raises(ImageRejected, match="empty"):
        decode_upload(b"", max_pixels=LIMIT)
    with pytest.raises(ImageRejected, match="not an image"):
        decode_upload(b"name,score\nalice,3\n" * 20, max_pixels=LIMIT)


def test_rejects_unsupported_format(chelsea: Image.Image) -> None:
    with pytest.raises(ImageRejected, match="GIF images are not accepted.*PNG, JPEG"):
        decode_upload(save(chelsea, "GIF"), max_pixels=LIMIT)


def test_rejects_png_with_corrupted_idat(astronaut: Image.Image) -> None:
    raw = bytearray(encode_png(astronaut))
    start = raw.find(b"IDAT") + 4 + 1000
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
    with pytest.raises(ImageRejected, match="corrupt"):
        decode_upload(bytes(raw), max_pixels=LIMIT)


def test_rejects_png_whose_idat_is_broken_but_checksummed(astronaut: Image.Image) -> None:
    """Corrupt the compressed data and fix the CRC: only a full decode can notice."""
    raw = bytearray(encode_png(astronaut))
    at = raw.find(b"IDAT")
    length = struct.unpack(">I", raw[at - 4 : at])[0]
    raw[at + 100 : at + 116] = bytes(b ^ 0xFF for b in raw[at + 100 : at + 116])
    raw[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(bytes(raw[at : at + 4 + length])))
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        decode_upload(bytes(raw), max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_rejects_truncated_files(astronaut: Image.Image, fmt: str) -> None:
    raw = save(astronaut, fmt)
    with pytest.raises(ImageRejected, match="truncated or corrupt|corrupt"):
        decode_upload(raw[: len(raw) * 2 // 3], max_pixels=LIMIT)


def test_rejects_too_many_pixels_from_the_header() -> None:
    raw = save(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageRejected, match=r"300x200 = 60,000 pixels, more than the limit of 50,000"):
        decode_upload(raw, max_pixels=50_000)


def test_rejects_a_30000_square_png_quickly() -> None:
    raw = huge_bilevel_png(30000, 30000)
    assert len(raw) < 200_000
    started = time.perf_counter()
    with pytest.raises(ImageRejected, match="too many pixels"):
        decode_upload(raw, max_pixels=LIMIT)
    assert time.perf_counter() - started < 5  # generous: 900 megapixels were never decoded


def test_our_limit_applies_below_pillows_bomb_limit() -> None:
    raw = huge_bilevel_png(12000, 10000)  # 120 Mpx: above Pillow's warning, below its error
    with pytest.raises(ImageRejected, match="12000x10000"):
        decode_upload(raw, max_pixels=LIMIT)


# --- encoding ------------------------------------------------------------------------------------


def test_encode_png_is_lossless_and_deterministic(chelsea: Image.Image) -> None:
    tagged = chelsea.copy()
    tagged.info["icc_profile"] = b"not really a profile"
    first, second = encode_png(chelsea), encode_png(tagged)
    assert first == second
    assert sha256_hex(first) == sha256_hex(second) and len(sha256_hex(first)) == 64
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(chelsea))


# --- degradation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_degrade_is_seeded_and_exact_in_size(chelsea: Image.Image, scale: int) -> None:
    lq, params = degrade(chelsea, scale=scale, seed=11)
    again, params_again = degrade(chelsea, scale=scale, seed=11)
    assert encode_png(lq) == encode_png(again)
    assert params == params_again
    assert json.loads(json.dumps(params)) == params
    width, height = (451 // scale) * scale, 300 // scale * scale
    assert lq.size == (width // scale, height // scale) and lq.mode == "RGB"
    assert params["hq_crop"] == [0, 0, width, height]
    assert params["hq_cropped"] == (width != 451)
    assert params["lq_size"] == list(lq.size)
    assert 1 <= len(params["passes"]) <= 2
    assert 30 <= params["final"]["jpeg_quality"] <= 95


def test_degrade_varies_with_seed_and_records_every_step(chelsea: Image.Image) -> None:
    results = [degrade(chelsea, scale=4, seed=seed) for seed in range(8)]
    assert len({encode_png(lq) for lq, _ in results}) == 8
    pass_counts = {len(params["passes"]) for _, params in results}
    assert pass_counts == {1, 2}
    for _, params in results:
        first = params["passes"][0]
        assert first["blur"]["kind"] in ("isotropic", "anisotropic")
        assert first["resize"]["interpolation"] in ("area", "bilinear", "bicubic")
        assert first["noise"]["kind"] in ("gaussian", "poisson")


def test_degrade_makes_a_worse_image(astronaut: Image.Image) -> None:
    lq, _ = degrade(astronaut, scale=4, seed=3)
    plain = astronaut.resize(lq.size, Image.Resampling.BICUBIC)
    error = np.abs(np.asarray(lq, float) - np.asarray(plain, float)).mean()
    assert error > 1.0


def test_degrade_refuses_bad_scale_and_tiny_images(chelsea: Image.Image) -> None:
    with pytest.raises(ValueError, match="scale must be 2 or 4"):
        degrade(chelsea, scale=3, seed=0)
    with pytest.raises(ValueError, match="too small"):
        degrade(chelsea.resize((20, 20)), scale=4, seed=0)


def test_upsample_sizes_and_methods(chelsea: Image.Image) -> None:
    small = chelsea.resize((45, 30))
    for method in ("bicubic", "nearest", "lanczos"):
        assert upsample(small, 4, method).size == (180, 120)
    assert np.array_equal(np.asarray(upsample(small, 2, "nearest"))[::2, ::2], np.asarray(small))
    with pytest.raises(ValueError, match="bicubic, nearest or lanczos"):
        upsample(small, 2, "magic")


# --- crops and masks -----------------------------------------------------------------------------


def test_render_instance_crop_draws_the_mask_boundary() -> None:
    image = Image.new("RGB", (40, 30), (10, 10, 10))
    mask = np.zeros((30, 40), bool)
    mask[10:20, 12:25] = True
    crop = render_instance_crop(image, (8, 6, 30, 24), mask)
    pixels = np.asarray(crop)
    assert crop.size == (22, 18)
    magenta = (pixels == [255, 0, 255]).all(axis=2)
    # the boundary is the ring of the rectangle, in crop coordinates
    ring = np.zeros((30, 40), bool)
    ring[10:20, 12:25] = True
    ring[11:19, 13:24] = False
    assert np.array_equal(magenta, ring[6:24, 8:30])
    plain = render_instance_crop(image, (8, 6, 30, 24), mask, outline=False)
    assert (np.asarray(plain) == 10).all()


def test_render_instance_crop_boundary_only_where_the_mask_ends() -> None:
    """A mask that runs past the crop gets no line at the crop edge: the region continues there."""
    image = Image.new("RGB", (20, 20))
    mask = np.ones((20, 20), bool)
    crop = np.asarray(render_instance_crop(image, (5, 5, 15, 15), mask, color=(0, 255, 0)))
    assert (crop == 0).all()
    with pytest.raises(ValueError, match="outside"):
        render_instance_crop(image, (5, 5, 25, 15), mask)
    with pytest.raises(ValueError, match="mask is"):
        render_instance_crop(image, (0, 0, 5, 5), mask[:10])


def test_mask_png_round_trip() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.5
    raw = mask_to_png(mask)
    assert Image.open(io.BytesIO(raw)).mode == "1"
    assert raw == mask_to_png(mask.copy())
    back = png_to_mask(raw)
    assert back.dtype == bool and np.array_equal(back, mask)
    with pytest.raises(ValueError, match="not a readable mask"):
        png_to_mask(b"nope")


def test_degrading_in_bands_gives_the_same_bytes() -> None:
    """Bounded memory (DSPO_WORKER_BAND_ROWS) changes nothing in the LQ image: the blur's sums and the
    noise's random stream are the same band by band as for the whole image."""
    rng = np.random.default_rng(1)
    for seed in range(8):
        hq = Image.fromarray(rng.integers(0, 256, (97 + 13 * seed, 131, 3), dtype=np.uint8))
        whole, whole_params = degrade(hq, scale=4, seed=seed)
        banded, banded_params = degrade(hq, scale=4, seed=seed, band_rows=7)
        assert banded_params == whole_params
        assert np.array_equal(np.asarray(banded), np.asarray(whole)), seed
