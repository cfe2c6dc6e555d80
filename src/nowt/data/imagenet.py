"""ImageNet (or any dataset) in the usual folder layout: ROOT/{train,val}/CLASS/IMAGE.

A reader of our own that decodes with Pillow (a matplotlib dependency, so present wherever nowt is), with
the same labels and pixels as torchvision's ImageFolder (but for 16-bit grayscale, which its loader clips
to white: see `pixels`): every folder of the root is a class (hidden ones too), its images are found
through symlinked folders, in torchvision's order. The folders are checked up front: train/ and val/ must
hold the same class folders (else a label would mean another class in val) and not be one folder or a
copy, every class must have an image (as torchvision requires), and every file must open as an image
(one that does not, e.g. an empty or truncated download, is skipped, counted and reported).
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nowt.data.transforms import Transform, imagenet_transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_HELP = ("Expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (the layout of torchvision's "
         "ImageFolder; for ImageNet, sort the validation images into class folders first). "
         "Pass --data-dir ROOT.")


class UnreadableImagesWarning(UserWarning):
    """Some files of an image folder are not images; they were skipped."""


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image (empty, or not a format Pillow identifies), or None.

    Reads the header only (cheap enough for ImageNet's 1.3M files); a file whose header is fine but whose
    pixel data is damaged is reported by `ImageFolder.__getitem__` when it is read."""
    from PIL import Image

    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsed from the header
    except Exception as e:  # UnidentifiedImageError, OSError, decompression-bomb errors, ...
        return f"not a readable image ({type(e).__name__})"
    return None


class ImageFolder(Dataset):
    """Images under root/<class>/, labelled by the sorted index of their class folder.

    `check`: open every file's header once, skipping (with an `UnreadableImagesWarning` that counts them)
    those that are not images. `classes`: the class names the labels must follow (train's, for val): a
    folder with other class folders is refused with the difference named. `eval_transform`: the transform
    of these images when they are scored rather than trained on (examples held out for `--lr-grid`: no
    augmentation); default `transform`, which then draws nothing at random."""

    def __init__(self, root: str | os.PathLike, transform: Transform | None = None, *, check: bool = True,
                 classes: list[str] | None = None, eval_transform: Transform | None = None):
        self.root, self.transform = Path(root), transform
        self.eval_transform = transform if eval_transform is None else eval_transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} not found. {_HELP}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if classes is not None and sorted(classes) != self.classes:
            raise ValueError(class_mismatch(classes, self.classes, self.root))
        samples = [(p, i) for i, c in enumerate(self.classes) for p in image_files(self.root / c)]
        self.skipped: list[tuple[Path, str]] = []
        if check and samples:
            with ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
                problems = list(pool.map(image_problem, (p for p, _ in samples), chunksize=256))
            self.skipped = [(p, why) for (p, _), why in zip(samples, problems, strict=True) if why]
            samples = [s for s, why in zip(samples, problems, strict=True) if not why]
        self.samples = samples
        shown = "; ".join(f"{p.relative_to(self.root)} ({why})" for p, why in self.skipped[:3])
        if len(self.skipped) > 3:
            shown += f"; and {len(self.skipped) - 3} more"
        if not self.samples:
            unreadable = f" (only {len(self.skipped)} unreadable file(s): {shown})" if self.skipped else ""
            raise FileNotFoundError(f"no images in {self.root}{unreadable}. {_HELP}")
        empty = sorted(set(self.classes) - {self.classes[i] for _, i in self.samples})
        if empty:  # torchvision refuses it too: a class no example can teach
            hidden = (" (a hidden folder is a class too, as in torchvision's ImageFolder: remove it)"
                      if any(c.startswith(".") for c in empty) else "")
            raise FileNotFoundError(f"image folder {self.root}: no readable image in the class folder(s) "
                                    f"{', '.join(empty)}{hidden}; give every class images, or remove it")
        loose = sorted(f.name for f in self.root.iterdir()
                       if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
        if loose:  # torchvision ignores them too, but a misplaced extraction should not go unseen
            warnings.warn(f"image folder {self.root}: {len(loose)} image(s) lie beside the class folders, in "
                          f"no class, and are not used: {listed(loose, 3)}", stacklevel=2)
        if self.skipped:
            warnings.warn(f"image folder {self.root}: skipped {len(self.skipped)} unreadable file(s) of "
                          f"{len(self.samples) + len(self.skipped)}: {shown}", UnreadableImagesWarning,
                          stacklevel=2)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                x = pixels(img)
        except Exception as e:  # damaged pixel data behind a good header, or the file changed since
            raise ValueError(f"cannot decode image {path} ({type(e).__name__}: {e}); "
                             f"remove or replace the file") from e
        return (self.transform(x) if self.transform else x), label


def pixels(img) -> torch.Tensor:
    """An opened image as float [3, H, W] in [0, 1]: torchvision's `img.convert("RGB")` / 255, except where
    that would clip. 16-bit grayscale (PNG and TIFF: Pillow's mode I;16; PGM: mode I, which Pillow scales to
    0..65535) is scaled from 0..65535, where convert("RGB") turns every value above 255 white (an image of
    16-bit pixels all but white). Other 32-bit pixels (mode I or F) have no fixed range: read as 8-bit
    values, and refused where one is outside 0..255 (or, of floats, not a whole number: [0, 1] scaled)."""
    if img.mode.startswith("I;16") and img.mode != "I;16S" or img.mode == "I" and img.format == "PPM":
        gray = torch.from_numpy(np.asarray(img).astype(np.float32) / 65535)
        return gray.expand(3, *gray.shape).clone()
    if img.mode in ("I", "F"):
        values = np.asarray(img)
        if values.size and not (0 <= values.min() <= values.max() <= 255 and (values % 1 == 0).all()):
            raise ValueError(f"its {img.mode}-mode pixels span [{values.min()}, {values.max()}], not the "
                             f"8-bit 0..255 or 16-bit 0..65535 nowt reads: save it with 8 or 16 bits")
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def image_files(folder: Path) -> list[Path]:
    """The files under `folder` with an image extension, in torchvision's ImageFolder order: through
    symlinked folders too (os.walk's followlinks), folder by folder in sorted order, each one's files
    sorted. A folder that cannot be read, or a symlink back into its own ancestors, is an error."""
    def unreadable(e: OSError) -> None:
        raise OSError(f"cannot read the folder {e.filename} ({e.strerror}) in image folder {folder}")

    lineage = {str(folder): {os.path.realpath(folder)}}  # each folder's own and its ancestors' real paths
    walked = []
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        for d in dirs:
            real = os.path.realpath(os.path.join(root, d))
            if real in lineage[root]:
                raise ValueError(f"{os.path.join(root, d)} links back to {real}, a folder it is in: the "
                                 f"image folder would repeat forever; remove the link")
            lineage[os.path.join(root, d)] = lineage[root] | {real}
        walked.append((root, files))
    return [Path(root, f) for root, files in sorted(walked) for f in sorted(files)
            if f.lower().endswith(IMAGE_EXTENSIONS)]


def class_mismatch(expected: list[str], found: list[str], root: Path) -> str:
    if not found and any(p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS) for p in root.iterdir()):
        return (f"image folder {root} holds images but no class folders (ImageNet's validation images come "
                f"in one folder): sort them into class folders, {root}/<class>/<image>, named as those of "
                f"{root.parent / 'train'} ({listed(sorted(expected))})")

    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    parts = [f"{what} {listed(names)}" for what, names in (("missing", missing), ("extra", extra)) if names]
    # a name copied through macOS (NFD) beside its NFC spelling looks the same in the message: say so
    spelled = sorted({unicodedata.normalize("NFC", n) for n in missing}
                     & {unicodedata.normalize("NFC", n) for n in extra})
    unicode = (f"; {listed(spelled)}: the same name(s) in another Unicode normalization (NFC/NFD), e.g. "
               f"from a copy through macOS: rename them alike" if spelled else "")
    return (f"image folder {root} has other classes than {root.parent / 'train'} ({'; '.join(parts)}"
            f"{unicode}): labels would mean other classes; give train/ and val/ the same class folders")


def listed(names: list[str], most: int = 10) -> str:
    """`names` joined by commas, the first `most` of them and "and N more" (a message stays readable)."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def load_image_folder(root: str | os.PathLike, split: str, *, augment: bool = True, size: int = 224,
                      classes: list[str] | None = None, check: bool = True) -> ImageFolder:
    """The `split` ("train" or "val") of an ImageNet-style folder, with the standard ImageNet transforms.
    `classes`: the class names it must have (see `ImageFolder`)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    transform = imagenet_transform(train=augment and split == "train", size=size)
    return ImageFolder(Path(root) / split, transform, classes=classes, check=check,
                       eval_transform=imagenet_transform(train=False, size=size))


def load_image_folders(root: str | os.PathLike, *, augment: bool = True,
                       size: int = 224) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) of an ImageNet-style folder, checked to have the same classes."""
    train = load_image_folder(root, "train", augment=augment, size=size)
    val = Path(root) / "val"
    if val.is_dir() and os.path.samefile(val, train.root):  # `ln -s train val`, to have a val/ at all
        raise ValueError(f"{val} is {train.root} (a link to it): the images trained on would be scored as "
                         f"the test set; give val/ images of its own")
    val_folder = load_image_folder(root, "val", augment=augment, size=size, classes=train.classes)
    refuse_copied_val(train, val_folder)
    return train, val_folder


def refuse_copied_val(train: ImageFolder, val: ImageFolder, probes: int = 64) -> None:
    """Refuses a val/ that is a copy of train/ (as `ln -s train val` is refused): `probes` val images drawn at
    random (seeded) that all have a file of the same class, name and bytes in train/. A few images shared
    by the splits are no refusal; real ImageNet's val/ names are not train/'s, so this reads few files."""
    rng = np.random.default_rng(0)
    picks = rng.choice(len(val.samples), size=min(probes, len(val.samples)), replace=False)
    for i in picks.tolist():
        path = val.samples[i][0]
        twin = train.root / os.path.relpath(path, val.root)
        if not (twin.is_file() and twin.stat().st_size == path.stat().st_size
                and twin.read_bytes() == path.read_bytes()):
            return
    raise ValueError(f"{val.root} is a copy of {train.root} (each of {len(picks)} val images drawn at random "
                     f"is also in train/, same name and bytes): the images trained on would be scored as the "
                     f"test set; give val/ images of its own")
