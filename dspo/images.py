"""Image helpers shared by the server and the worker: safe decoding of uploads, lossless encoding,
the seeded Real-ESRGAN-style degradation that makes LQ images from HQ ones, and instance crops.

Pillow and numpy only: this module must stay importable without the worker or torch.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # Pillow built without LittleCMS cannot colour-manage; pixels are then taken as sRGB
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None  # type: ignore[assignment]

# Formats accepted from uploads, by Pillow's format name. MPO is what Pillow calls a JPEG with extra
# pictures (phones and cameras write them); only its first picture is used.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP"})
_ALLOWED_TEXT = "PNG, JPEG, WebP, TIFF or BMP"

# Errors that Pillow's decoders raise on broken or truncated data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


class ImageRejected(ValueError):
    """An uploaded file cannot be used as an image; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Decoding and encoding


def decode_upload(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an uploaded file into an RGB image, or raise ImageRejected.

    The pixel count is checked from the header before any pixel is decoded. The whole file is then
    decoded, so truncated and corrupt files are refused rather than silently padded. EXIF orientation
    is applied; an embedded colour profile other than sRGB is converted to sRGB (an unreadable profile
    is ignored, as browsers do); transparency is composited on white; 16-bit and float grey are scaled
    to 8 bits.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise ImageRejected("The file is empty (0 bytes): upload a PNG, JPEG, WebP, TIFF or BMP image.")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated uploads would be "
            "accepted: set it back to False."
        )

    img = _open_checked(data, max_pixels=max_pixels)
    if img.format == "PNG":
        _verify_png(data)
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"The image has too many pixels ({exc}).") from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            f"The {img.format} file is truncated or corrupt ({exc}): re-export it from the original "
            "and upload it again."
        ) from exc

    try:
        img = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            f"The image's EXIF metadata cannot be read ({exc}): re-save the image without metadata."
        ) from exc
    return to_rgb(_to_srgb(img))


def _open_checked(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open (header only), check the format and the pixel count."""
    try:
        with warnings.catch_warnings():
            # Our own max_pixels is the limit that counts; Pillow's softer warning would only add noise.
            # (catch_warnings is not thread-safe before Python 3.14: a race can at worst leave this
            # one "ignore" filter installed process-wide, which is harmless here.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            f"The image has too many pixels ({exc}); the limit here is {max_pixels:,} pixels: "
            "downscale it or cut it into tiles."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            f"The file is not an image that can be read: upload a {_ALLOWED_TEXT} file."
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            f"The image header is corrupt ({exc}): re-export the image and upload it again."
        ) from exc

    if img.format not in ALLOWED_FORMATS:
        raise ImageRejected(
            f"{img.format} images are not accepted: convert the file to {_ALLOWED_TEXT} and upload it again."
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"The image header gives an empty size ({width}x{height}): the file is broken.")
    if width * height > max_pixels:
        raise ImageRejected(
            f"The image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}: downscale it or cut it into tiles."
        )
    return img


def _verify_png(data: bytes) -> None:
    """Check the CRC of every PNG chunk (Pillow's load() skips the IDAT checksums)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            f"The PNG file is corrupt ({exc}): re-export it from the original and upload it again."
        ) from exc


# Which profile colour spaces fit which image modes.
_PROFILE_SPACES = {"RGB": "RGB", "CMYK": "CMYK", "L": "GRAY"}


def _to_srgb(img: Image.Image) -> Image.Image:
    """Convert pixels described by an embedded non-sRGB ICC profile to sRGB (mode RGB)."""
    icc = img.info.get("icc_profile")
    if not icc or ImageCms is None:
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = source.profile.xcolor_space.strip()
        description = ImageCms.getProfileDescription(source)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img
    if "sRGB" in description:
        return img
    if img.mode not in _PROFILE_SPACES:  # alpha and palette: composite first, then convert the colours
        img = to_rgb(img)
    if _PROFILE_SPACES.get(img.mode) != space:
        return img
    try:
        converted = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except ImageCms.PyCMSError:
        return img
    return converted if converted is not None else img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels are composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _deep_grey_to_l(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected(
            f"Images in colour mode {img.mode} cannot be converted to RGB ({exc}): save it as 8-bit RGB."
        ) from exc


def _deep_grey_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey to 8-bit L.

    16-bit modes are scaled by 255/65535. For 32-bit integer and float images the value range is not
    declared: values that fit in 0..255 are kept, values that fit in 0..65535 are treated as 16-bit, and
    anything else is scaled by its own maximum.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    else:
        finite = arr[np.isfinite(arr)]
        high = float(finite.max()) if finite.size else 0.0
        top = 255.0 if high <= 255.0 else 65535.0 if high <= 65535.0 else high
    scaled = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0) * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def encode_png(img: Image.Image) -> bytes:
    """Encode as PNG; the same pixels always give the same bytes (no metadata is written)."""
    clean = img.copy()
    clean.info = {k: v for k, v in img.info.items() if k == "transparency"}
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Resampling

RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


def resample_filter(method: str) -> Image.Resampling:
    try:
        return RESAMPLING[method]
    except KeyError:
        raise ValueError(f"Unknown resampling method {method!r}; known: {', '.join(RESAMPLING)}") from None


def upsample(lq: Image.Image, scale: int, method: str = "bicubic") -> Image.Image:
    """Resize to exactly (width * scale, height * scale)."""
    if method not in ("bicubic", "nearest", "lanczos"):
        raise ValueError(f"Unknown upsampling method {method!r}; use bicubic, nearest or lanczos")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return lq.resize((lq.width * scale, lq.height * scale), resample_filter(method))


# ---------------------------------------------------------------------------------------------
# Seeded Real-ESRGAN-style degradation

DEGRADATION_VERSION = "realesrgan-style-v1"
_INTERPOLATIONS = ("area", "bilinear", "bicubic")


def bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """Row ranges [y0, y1) that cover `height` rows, `rows` at a time (0: one range, the whole)."""
    step = rows if rows > 0 else max(height, 1)
    for y0 in range(0, height, step):
        yield y0, min(y0 + step, height)


def degrade(
    hq: Image.Image, *, scale: int, seed: int, band_rows: int = 0
) -> tuple[Image.Image, dict[str, Any]]:
    """Synthesise an LQ image from an HQ one, Real-ESRGAN style, reproducibly.

    One or two passes of (blur, resize, noise, JPEG), then a final resize to exactly
    (W // scale, H // scale) of the HQ image cropped to a multiple of ``scale``, and a JPEG step
    before or after it. Returns the LQ image (RGB) and every parameter drawn, JSON-serialisable.
    The same HQ pixels, scale and seed give the same LQ bytes.

    band_rows > 0 blurs and adds noise `band_rows` rows at a time (the same bytes: each pixel's
    arithmetic and the random stream's order are unchanged), so that no float copy of a whole
    40-megapixel image is ever made; 0 works on whole images.
    """
    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, got {scale!r}")
    hq = to_rgb(hq)
    width, height = (hq.width // scale) * scale, (hq.height // scale) * scale
    if width < scale * 8 or height < scale * 8:
        raise ValueError(f"HQ image {hq.width}x{hq.height} is too small for x{scale}: need {scale * 8} px")
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {
        "version": DEGRADATION_VERSION,
        "seed": int(seed),
        "scale": scale,
        "hq_size": [hq.width, hq.height],
        "hq_crop": [0, 0, width, height],
        "hq_cropped": (width, height) != hq.size,
        "lq_size": [width // scale, height // scale],
    }
    img = hq.crop((0, 0, width, height)) if (width, height) != hq.size else hq.copy()

    passes = int(rng.integers(1, 3))
    params["passes"] = []
    for index in range(passes):
        first = index == 0
        step: dict[str, Any] = {}
        img = _random_blur(img, rng, step, first=first, band_rows=band_rows)
        img = _random_resize(img, rng, step, first=first, target=(width // scale, height // scale))
        img = _random_noise(img, rng, step, first=first, band_rows=band_rows)
        if index < passes - 1:
            img = _jpeg(img, int(rng.integers(30, 96)), step)
        params["passes"].append(step)

    final: dict[str, Any] = {"jpeg_first": bool(rng.random() < 0.5)}
    quality = int(rng.integers(30, 96))
    interpolation = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
    final["interpolation"] = interpolation
    target = (width // scale, height // scale)
    if final["jpeg_first"]:
        img = _jpeg(img, quality, final)
        img = img.resize(target, resample_filter(interpolation))
    else:
        img = img.resize(target, resample_filter(interpolation))
        img = _jpeg(img, quality, final)
    params["final"] = final
    return img, params


def _random_blur(
    img: Image.Image, rng: np.random.Generator, step: dict[str, Any], *, first: bool, band_rows: int = 0
) -> Image.Image:
    probability = 1.0 if first else 0.8
    if rng.random() >= probability:
        step["blur"] = None
        return img
    sigma_max = 3.0 if first else 1.5
    isotropic = bool(rng.random() < 0.5)
    sigma_x = float(rng.uniform(0.2, sigma_max))
    sigma_y = sigma_x if isotropic else float(rng.uniform(0.2, sigma_max))
    angle = 0.0 if isotropic else float(rng.uniform(-np.pi, np.pi))
    size = int(rng.choice(np.arange(7, 22, 2)))
    step["blur"] = {
        "kind": "isotropic" if isotropic else "anisotropic",
        "sigma_x": sigma_x,
        "sigma_y": sigma_y,
        "angle": angle,
        "kernel_size": size,
    }
    kernel = gaussian_kernel(size, sigma_x, sigma_y, angle)
    if band_rows <= 0:
        return Image.fromarray(_to_uint8(convolve(np.asarray(img, dtype=np.float32), kernel)))
    pixels = np.asarray(img)
    out = np.empty_like(pixels)
    half = kernel.shape[0] // 2
    for y0, y1 in bands(pixels.shape[0], band_rows):
        # The rows this band's kernel reaches, reflected at the image's top and bottom as np.pad does.
        rows = _reflect(np.arange(y0 - half, y1 + half), pixels.shape[0])
        out[y0:y1] = _to_uint8(convolve(pixels[rows].astype(np.float32), kernel, pad_rows=False))
    return Image.fromarray(out)


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """np.pad's "reflect" indexing (the edge row not repeated), for a pad narrower than the image."""
    index = np.abs(index)
    return np.where(index >= size, 2 * (size - 1) - index, index)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """A normalised (size x size) Gaussian with axes sigma_x, sigma_y rotated by angle (radians)."""
    half = size // 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * xs + sin * ys
    v = -sin * xs + cos * ys
    kernel = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def convolve(arr: np.ndarray, kernel: np.ndarray, *, pad_rows: bool = True) -> np.ndarray:
    """2-D convolution of an HxWxC float array with reflect padding, by a fixed sum of shifted copies
    (exactly reproducible, unlike an FFT whose rounding depends on the library build). pad_rows=False:
    `arr` already holds the rows above and below that the kernel reaches (a band of a larger image);
    the result has kernel-height - 1 rows fewer."""
    half_y, half_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(arr, ((half_y if pad_rows else 0,) * 2, (half_x, half_x), (0, 0)), mode="reflect")
    height, width = padded.shape[0] - 2 * half_y, arr.shape[1]
    out = np.zeros((height, width, arr.shape[2]), dtype=arr.dtype)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            weight = kernel[dy, dx]
            if weight > 1e-6:
                out += weight * padded[dy : dy + height, dx : dx + width]
    return out


def _random_resize(
    img: Image.Image,
    rng: np.random.Generator,
    step: dict[str, Any],
    *,
    first: bool,
    target: tuple[int, int],
) -> Image.Image:
    mode = ["up", "down", "keep"][int(rng.choice(3, p=[0.2, 0.7, 0.1]))]
    if mode == "up":
        factor = float(rng.uniform(1.0, 1.5 if first else 1.2))
    elif mode == "down":
        factor = float(rng.uniform(0.15 if first else 0.3, 1.0))
    else:
        factor = 1.0
    interpolation = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
    # Never go below half the final LQ size: the last resize would then mostly be an upscale.
    new_w = max(round(img.width * factor), max(1, target[0] // 2))
    new_h = max(round(img.height * factor), max(1, target[1] // 2))
    step["resize"] = {"mode": mode, "factor": factor, "interpolation": interpolation, "size": [new_w, new_h]}
    if (new_w, new_h) == img.size:
        return img
    return img.resize((new_w, new_h), resample_filter(interpolation))


def _random_noise(
    img: Image.Image, rng: np.random.Generator, step: dict[str, Any], *, first: bool, band_rows: int = 0
) -> Image.Image:
    pixels = np.asarray(img)
    grey = bool(rng.random() < 0.4)
    if rng.random() < 0.5:
        sigma = float(rng.uniform(1.0, 30.0 if first else 25.0))
        step["noise"] = {"kind": "gaussian", "sigma": sigma, "grey": grey}
    else:
        amount = float(rng.uniform(0.05, 3.0 if first else 2.5))
        step["noise"] = {"kind": "poisson", "scale": amount, "grey": grey}
    out = np.empty_like(pixels)
    # Band after band, top to bottom: the generator draws the same numbers in the same order as for
    # the whole image at once.
    for y0, y1 in bands(pixels.shape[0], band_rows):
        arr = pixels[y0:y1].astype(np.float32)
        if step["noise"]["kind"] == "gaussian":
            shape = arr.shape[:2] + ((1,) if grey else (3,))
            noise = rng.standard_normal(shape).astype(np.float32) * sigma
        else:
            base = arr.mean(axis=2, keepdims=True) if grey else arr
            counts = rng.poisson(np.clip(base, 0, 255).astype(np.float64)).astype(np.float32)
            noise = (counts - base) * amount
        out[y0:y1] = _to_uint8(arr + noise)
    return Image.fromarray(out)


def _jpeg(img: Image.Image, quality: int, step: dict[str, Any]) -> Image.Image:
    step["jpeg_quality"] = quality
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Instance crops and masks


def render_instance_crop(
    image: Image.Image,
    box: tuple[int, int, int, int],
    mask: np.ndarray | None,
    *,
    outline: bool = True,
    color: tuple[int, int, int] = (255, 0, 255),
) -> Image.Image:
    """Crop ``image`` to ``box`` (x0, y0, x1, y1; x1, y1 exclusive) and, if ``outline``, paint the
    1-pixel inner boundary of ``mask`` (a bool array the size of the image) in ``color``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
        raise ValueError(f"box {box} is empty or outside the {image.width}x{image.height} image")
    crop = to_rgb(image).crop((x0, y0, x1, y1))
    if mask is None or not outline:
        return crop
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.width}x{image.height}")
    edge = mask_boundary(mask.astype(bool))[y0:y1, x0:x1]
    pixels = np.array(crop)
    pixels[edge] = color
    return Image.fromarray(pixels)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with at least one 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def mask_to_png(mask: np.ndarray) -> bytes:
    """A bool HxW mask as a 1-bit PNG (mode "1"); deterministic bytes."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    img = Image.fromarray(mask.astype(bool)).convert("1")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_to_mask(data: bytes) -> np.ndarray:
    """Read a mask PNG back: mode "1" as is; other modes as grey, True where the value is above 127."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "1":
                return np.array(img, dtype=bool)
            return np.asarray(img.convert("L")) > 127
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ValueError(f"not a readable mask PNG: {exc}") from exc
