"""Image reading that survives corrupt files, and the count of the files it skipped.

Mappers call :func:`read_image_or_none` (numpy HWC) or :func:`read_rgb_tensor` (the pre-training
mapper's torch decoder, PIL as its fallback) and return ``None`` when it does; Detectron2's
``MapDataset`` then retries with another index, so one broken JPEG in a million does not stop a
week-long pre-training run.

The skipped-image counter is a ``multiprocessing.Value`` created when this module is imported.
Data-loader workers started by ``fork`` (the default on Linux, used by Detectron2's loaders)
inherit the same shared memory, so their skips add up in the training process, where the
hook :class:`ssprl_d2.engine.hooks.SkippedImagesLogger` reads them. Workers started by
``spawn``/``forkserver`` re-import the module and count separately (their warnings are still
logged). Each training process (rank) has its own counter; that hook sums the ranks.
"""
import logging
import multiprocessing
import struct
import warnings
import zlib
from typing import Optional

import numpy as np
import torch
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image

__all__ = [
    "note_image_read",
    "num_skipped_images",
    "read_image_array",
    "read_image_or_none",
    "read_rgb_tensor",
]

logger = logging.getLogger(__name__)

# Shared with fork-started workers; see the module docstring.
_SKIPPED = multiprocessing.Value("q", 0)
# Reads attempted (successful or not), shared the same way.
_READS = multiprocessing.Value("q", 0)
# Stop when at least this many reads failed and they are more than MAX_FAILED_FRACTION of all:
# Detectron2's MapDataset retries other indices forever, so a dataset of unreadable files
# would otherwise spin without ever training.
MIN_FAILED_TO_STOP = 20
MAX_FAILED_FRACTION = 0.5

# What PIL and the file layer raise for missing, truncated, corrupt or non-image files.
_READ_ERRORS = (
    OSError,  # missing file, unidentified image, truncated data
    ValueError,
    SyntaxError,  # some PIL plugins (e.g. broken PNG chunks)
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


# PIL modes of 16-bit (and 32-bit integer) greyscale images, e.g. 16-bit PNGs. PIL's convert()
# to "RGB" / "L" clips them at 255; read_image_array scales them to 8 bits instead.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit "L" (``value >> 8``); other images unchanged."""
    if image.mode not in _WIDE_GREY_MODES:
        return image
    wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)  # "I" is int32
    return Image.fromarray((wide >> 8).astype(np.uint8), mode="L")


def read_image_array(file_name: str, format: Optional[str] = "RGB") -> np.ndarray:
    """The project's one image decoder: ``detectron2.data.detection_utils.read_image`` with
    16-bit greyscale scaled to 8 bits (``value >> 8``) instead of clipped at 255.

    EXIF orientation is applied; palette, CMYK, grey and alpha images are converted by PIL.

    Args:
        file_name: path (or PathManager URI) of the image.
        format: as in ``read_image`` ("RGB", "BGR", "L", ...; None keeps PIL's mode).

    Returns:
        the HWC uint8 image (HW1 for "L").

    Raises:
        OSError, ValueError, Image.DecompressionBombError, ...: for an unreadable file (see
            :func:`read_image_or_none`, which turns them into ``None``).
    """
    with PathManager.open(file_name, "rb") as f:
        image = _to_8bit(ImageOps.exif_transpose(Image.open(f)))
        if format == "RGB" and image.mode == "RGB":
            return np.asarray(image)  # no conversion copy
        return convert_PIL_to_numpy(image, format)


def read_image_or_none(
    file_name: str, format: Optional[str] = "RGB", count_read: bool = True
) -> Optional[np.ndarray]:
    """:func:`read_image_array`, but ``None`` for an unreadable file.

    A failure is logged as a warning with the file name and the reason, and counted (see
    :func:`num_skipped_images`).

    Args:
        file_name: path (or PathManager URI) of the image.
        format: as in ``read_image`` ("RGB", "BGR", "L", ...).
        count_read: count this call as one image read (False when the caller already did, see
            :func:`note_image_read`).

    Returns:
        the HWC uint8 image, or ``None``.
    """
    if count_read:
        note_image_read()
    try:
        return read_image_array(file_name, format=format)
    except _READ_ERRORS as e:
        with _SKIPPED.get_lock():
            _SKIPPED.value += 1
            failed = _SKIPPED.value
        logger.warning(f"Skipping unreadable image {file_name}: {type(e).__name__}: {e}")
        reads = int(_READS.value)
        if failed >= MIN_FAILED_TO_STOP and failed > MAX_FAILED_FRACTION * reads:
            raise RuntimeError(
                f"{failed} of the last {reads} image reads of this process failed (latest: "
                f"{file_name}: {type(e).__name__}: {e}). Most of the dataset is unreadable: "
                "check the image files and the dataset paths."
            ) from None
        return None


def note_image_read() -> None:
    """Count one image read; for readers that decode without :func:`read_image_or_none` and
    fall back to it (with ``count_read=False``) only on failure."""
    with _READS.get_lock():
        _READS.value += 1


def num_skipped_images() -> int:
    """Images skipped so far by this process and its fork-started data-loader workers."""
    return int(_SKIPPED.value)


def read_rgb_tensor(file_name: str) -> Optional[torch.Tensor]:
    """Decode an image as a (3, H, W) uint8 RGB tensor backed by HWC memory (no transposing
    copy; the uint8 resize kernel wants channels-last anyway), EXIF orientation applied.

    JPEG files are decoded by torchvision (libjpeg-turbo, as PIL, same pixels; ~15% faster
    than going through PIL and numpy), other files and anything torchvision cannot decode by
    :func:`read_image_or_none` (the project's one PIL decoder: 16-bit PNGs scaled to 8 bits),
    which logs and counts unreadable files; those give None. Same pixels as
    ``read_image_array(file_name, format="RGB")``.
    """
    note_image_read()
    try:
        with PathManager.open(file_name, "rb") as f:
            data = bytearray(f.read())
        if data[:3] == b"\xff\xd8\xff":  # JPEG
            image = decode_image(
                torch.frombuffer(data, dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=True,
            )
            if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
                # HWC memory already, except after an EXIF rotation or a grey decode.
                return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    except Exception:
        pass  # PIL decides below
    return _read_rgb_tensor_pil(file_name)


def _read_rgb_tensor_pil(file_name: str) -> Optional[torch.Tensor]:
    """:func:`read_rgb_tensor` through PIL (:func:`read_image_or_none`)."""
    array = read_image_or_none(file_name, format="RGB", count_read=False)
    if array is None:
        return None
    # The array may be read-only; it is never written to.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
