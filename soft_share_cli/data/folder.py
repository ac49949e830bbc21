"""``folder:DIR`` data: one sub-folder of same-size images per class, checked before decoding.

Sorted sub-folder names give the class indices; dot-files are skipped, symlinks are followed once
and never recursed into, and every image header is checked (size, pixels, format) before
anything is decoded. Both splits are all of the images.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from soft_share_cli import limits
from soft_share_cli.data.common import check_images, limit_error, shorten, stat_mode
from soft_share_cli.errors import DataError
from soft_share_cli.files import file_kind, require_regular_file

#: The image formats ``folder:`` data may use. Pillow opens many more, some through external
#: programs (EPS runs Ghostscript) or rarely used decoders: a downloaded data set needs none.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _listing(folder: Path, limit: int, name: str, what: str) -> list[tuple[str, int]]:
    """``(entry name, st_mode)`` of ``folder``'s entries not starting with a dot, sorted.

    Symlinks are followed (a loop or a dangling link is a :class:`DataError` naming it) and
    never recursed into; more than ``limit`` entries (``limits.<name>``) are refused while
    listing, so a folder of millions of entries stops early.
    """
    entries: list[tuple[str, int]] = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.startswith("."):
                    continue
                entries.append((entry.name, stat_mode(folder / entry.name)))
                if len(entries) > limit:
                    cap = getattr(limits, name)
                    raise limit_error(folder, f"more than {cap} {what}", cap, name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return sorted(entries)


def _open_image(file: Path) -> Any:
    """``file`` opened with Pillow (header only, nothing decoded), its size checked first."""
    from PIL import Image

    require_regular_file(file, "image file", DataError)
    try:
        with warnings.catch_warnings():  # our own bound is lower than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(file, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise limit_error(
            file, "an image of more pixels than Pillow opens", limits.MAX_IMAGE_PIXELS,
            "MAX_IMAGE_PIXELS",
        ) from None  # fmt: skip
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error ...
        raise DataError(f"{file}: not a readable image ({shorten(str(exc), 200)})") from None
    width, height = img.size
    if width * height > limits.MAX_IMAGE_PIXELS:
        img.close()
        raise limit_error(
            file, f"an image of {width} x {height} pixels", limits.MAX_IMAGE_PIXELS,
            "MAX_IMAGE_PIXELS",
        )  # fmt: skip
    if width < 1 or height < 1:
        img.close()
        raise DataError(f"{file}: an image of {width} x {height} pixels has no pixels")
    return img


def load_folder(path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """All images under ``path`` (either split), scaled to [0, 1], with their per-channel stats.

    The preprocessing holds the mean and std ``load_data`` applies.
    """
    assert path is not None
    # Files at the top level are ignored (only sub-folders name classes), as torchvision does;
    # anything there that is neither a folder nor a regular file is refused.
    classes: list[str] = []
    for name, mode in _listing(path, limits.MAX_CLASSES, "MAX_CLASSES", "class folders"):
        if stat.S_ISDIR(mode):
            classes.append(name)
        elif not stat.S_ISREG(mode):
            raise DataError(f"{path / name}: is {file_kind(mode)}, not a class folder or a file")
    if not classes:
        raise DataError(f"{path}: no class sub-folders; expected DIR/<class>/<image>")
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        left = limits.MAX_SAMPLES - len(files)
        entries = _listing(path / name, left, "MAX_SAMPLES", "images in all")
        if not entries:
            raise DataError(f"{path / name}: class folder has no images")
        for entry, mode in entries:
            if stat.S_ISDIR(mode):
                raise DataError(
                    f"{path / name / entry}: nested folders are not supported in folder: data"
                )
            files.append((path / name / entry, index))
    # First pass: headers only (sizes and modes), so nothing is decoded before it is checked.
    size: tuple[int, int] | None = None
    grey = True
    for file, _ in files:
        with _open_image(file) as img:
            if size is None:
                size = img.size
            elif img.size != size:
                raise DataError(f"{file}: size {img.size} differs from {files[0][0]}'s {size}")
            grey = grey and img.mode in ("1", "L")
    assert size is not None
    mode, channels = ("L", 1) if grey else ("RGB", 3)
    check_images(path, len(files), channels, size[0] * size[1])
    # Second pass: decode each image into its slot of one preallocated array.
    pixels = np.empty((len(files), size[1], size[0], channels), dtype=np.uint8)
    for slot, (file, _) in enumerate(files):
        with _open_image(file) as img:
            if img.size != size:  # changed since the first pass
                raise DataError(f"{file}: size {img.size} differs from {files[0][0]}'s {size}")
            try:
                array = np.asarray(img.convert(mode), dtype=np.uint8)
            except Exception as exc:  # truncated data, decoder errors
                raise DataError(
                    f"{file}: not a readable image ({shorten(str(exc), 200)})"
                ) from None
        pixels[slot] = array.reshape(size[1], size[0], channels)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32)
    del pixels
    x /= 255
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    std[std == 0] = 1.0  # a constant channel would divide by zero; leave it centred only
    prep = {
        "dataset": "folder",
        "root": str(path),
        "classes": classes,
        "mode": mode,
        "scale": 1 / 255,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "split": "none: train and test are the whole folder",
    }
    labels = np.asarray([index for _, index in files], dtype=np.int64)
    return x, labels, len(classes), prep  # load_data normalises by prep's mean and std
