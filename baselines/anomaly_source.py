"""Anomaly-source textures for DRAEM's synthetic defects, offline or from DTD.

DRAEM fills each Perlin-noise mask with a randomly augmented image from the Describable Textures Dataset
(DTD, 5640 images).  DTD cannot be downloaded on the suite's development machines, so there are two
sources, chosen by DRAEM's ``anomaly_source`` parameter:

``offline`` (default)
    Textures the suite builds without any download: random square crops of real photographs that ship
    inside scikit-image (:data:`PHOTOS`) plus procedurally generated patterns (coloured fractal noise,
    stripes, checkerboards, Voronoi cells, dots, plaid).  Every photograph the embedded benchmark dataset
    (:mod:`adbench.data.embedded`) uses is deliberately left out (:data:`EXCLUDED_PHOTOS`): those it builds
    normal images from (``brick``, ``grass``, ``gravel``, ``coins``, ``coffee``, ``chelsea``/``cat``,
    sklearn's ``flower``) -- an anomaly source equal to a normal class would teach DRAEM to flag normal
    content -- and those its ``contamination`` defects are cut from (``astronaut``, ``coffee``,
    ``rocket``, sklearn's ``china``) -- training on the test defects' own source would flatter DRAEM
    (DTD has nothing to do with MVTec's defects).  Fully determined by a seed.
``dtd``
    The real DTD, read lazily from a directory (``<root>/images/<class>/*.jpg`` as unpacked from
    ``dtd-r1.0.1.tar.gz``, or ``<root>/<class>/*.jpg`` as the public DRAEM code globs it).  The workflow
    rule ``download_dtd`` fetches it.

Every texture is resized to the training resolution (DRAEM resizes DTD images to the image size) and, each
time one is drawn, passed through three distinct augmenters picked at random from ten (:data:`AUGMENTERS`).
The ten follow the public code's imgaug list (gamma contrast per channel 0.5-2, brightness x0.8-1.2 and
+-30, PIL sharpness, hue and saturation +-50, solarize with p 0.5 and threshold 32-128, posterize, invert,
PIL autocontrast, PIL equalize, rotation +-45 deg), re-implemented on numpy/scipy/PIL because imgaug is
not a dependency of the suite; small numerical differences to imgaug are expected (e.g. brightness is
changed on the BT.601 luma instead of imgaug's YCrCb round trip).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "PHOTOS",
    "EXCLUDED_PHOTOS",
    "AUGMENTERS",
    "AnomalySource",
    "offline_textures",
    "dtd_textures",
    "make_anomaly_source",
    "augment_texture",
    "procedural_texture",
    "DTD_URL",
]

DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"

#: Packaged photographs used by the offline source: ``(package, name)``.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "camera"),
    ("skimage", "moon"),
    ("skimage", "clock"),
    ("skimage", "page"),
    ("skimage", "immunohistochemistry"),
    ("skimage", "hubble_deep_field"),
    ("skimage", "retina"),
)

#: Photographs the embedded dataset uses for normal images or for defects: never an anomaly source.
EXCLUDED_PHOTOS = frozenset(
    {"brick", "grass", "gravel", "coins", "coffee", "chelsea", "cat", "astronaut", "rocket", "china", "flower"}
)

PROCEDURAL_KINDS = ("noise", "stripes", "checker", "cells", "dots", "plaid")


# --------------------------------------------------------------------------------------------- helpers
def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _load_photo(package: str, name: str) -> np.ndarray:
    if package == "skimage":
        from skimage import data

        return _to_rgb_uint8(getattr(data, name)())
    if package == "sklearn":
        # read the JPEG that ships in scikit-learn directly: importing sklearn.datasets takes seconds
        import importlib.util

        from PIL import Image

        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("scikit-learn is not installed; its sample images are part of the offline source")
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images" / name
        with Image.open(path) as im:
            return _to_rgb_uint8(np.asarray(im.convert("RGB")))
    raise ValueError(f"unknown photo package {package!r}")


def _random_crop(img: np.ndarray, rng: np.random.Generator, min_frac: float = 0.3) -> np.ndarray:
    h, w = img.shape[:2]
    side = int(round(min(h, w) * rng.uniform(min_frac, 1.0)))
    side = max(8, min(side, h, w))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return img[y : y + side, x : x + side]


def _smooth_noise(size: int, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1] (sum of upsampled random grids)."""
    from baselines.perlin import perlin_noise

    out = np.zeros((size, size))
    amp, total = 1.0, 0.0
    base = int(rng.integers(2, 6))
    for o in range(octaves):
        res = min(base * 2**o, size)
        out += amp * perlin_noise((size, size), (res, res), rng)
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo + 1e-12)


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(n, 3))


def procedural_texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 texture of ``kind`` (one of :data:`PROCEDURAL_KINDS`)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    if kind == "noise":
        t = _smooth_noise(size, rng)[..., None]
        c0, c1 = _palette(rng, 2)
        img = c0 * (1 - t) + c1 * t
    elif kind == "stripes":
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 20)
        phase = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))
        t = (phase > rng.uniform(-0.5, 0.5)).astype(np.float64)[..., None] if rng.random() < 0.5 else (
            0.5 + 0.5 * phase
        )[..., None]
        c0, c1 = _palette(rng, 2)
        img = c0 * (1 - t) + c1 * t
    elif kind == "checker":
        n = rng.uniform(3, 16)
        theta = rng.uniform(0, math.pi / 2)
        u = xx * math.cos(theta) + yy * math.sin(theta)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        t = ((np.floor(u * n) + np.floor(v * n)) % 2)[..., None]
        c0, c1 = _palette(rng, 2)
        img = c0 * (1 - t) + c1 * t
    elif kind == "cells":
        k = int(rng.integers(8, 60))
        pts = rng.uniform(0, 1, size=(k, 2))
        d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
        nearest = d.argmin(axis=-1)
        colors = _palette(rng, k)
        img = colors[nearest]
        edge = np.sort(d, axis=-1)
        border = (edge[..., 1] - edge[..., 0]) < rng.uniform(0.005, 0.03)
        img[border] = _palette(rng, 1)[0]
    elif kind == "dots":
        img = np.broadcast_to(_palette(rng, 1)[0], (size, size, 3)).copy()
        for _ in range(int(rng.integers(10, 80))):
            cy, cx = rng.uniform(0, 1, size=2)
            r = rng.uniform(0.01, 0.08)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = _palette(rng, 1)[0]
    elif kind == "plaid":
        f1, f2 = rng.uniform(2, 12, size=2)
        a = 0.5 + 0.5 * np.sin(2 * math.pi * f1 * xx + rng.uniform(0, 6.3))
        b = 0.5 + 0.5 * np.sin(2 * math.pi * f2 * yy + rng.uniform(0, 6.3))
        c0, c1, c2 = _palette(rng, 3)
        img = c0 * (1 - a[..., None]) * (1 - b[..., None]) + c1 * a[..., None] + c2 * b[..., None]
    else:
        raise ValueError(f"unknown procedural texture kind {kind!r}; known: {', '.join(PROCEDURAL_KINDS)}")
    img = img + rng.normal(0, rng.uniform(0, 12), size=img.shape)  # a little grain
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ augmenters
def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _gamma_contrast(img, rng):
    gamma = rng.uniform(0.5, 2.0, size=3)  # per channel
    return 255.0 * (img / 255.0) ** gamma


def _brightness(img, rng):
    mul, add = rng.uniform(0.8, 1.2), rng.uniform(-30, 30)
    y = _luma(img)
    return img + (y * (mul - 1.0) + add)[..., None]


def _sharpness(img, rng):
    # PIL ImageEnhance.Sharpness: blend with PIL's SMOOTH-filtered image, borders untouched
    factor = rng.uniform(0.0, 2.0)
    kernel = np.ones((3, 3)) / 13.0
    kernel[1, 1] = 5.0 / 13.0
    blurred = img.copy()
    for c in range(3):
        blurred[1:-1, 1:-1, c] = ndimage.convolve(img[..., c], kernel, mode="nearest")[1:-1, 1:-1]
    return blurred + factor * (img - blurred)


def _hue_saturation(img, rng):
    from skimage.color import hsv2rgb, rgb2hsv

    dh, ds = rng.uniform(-50, 50, size=2)  # per_channel=True: independent values for hue and saturation
    hsv = rgb2hsv(np.clip(img, 0, 255) / 255.0)
    hsv[..., 0] = (hsv[..., 0] + dh / 255.0) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] + ds / 255.0, 0.0, 1.0)
    return hsv2rgb(hsv) * 255.0


def _solarize(img, rng):
    if rng.random() >= 0.5:
        return img
    thr = rng.uniform(32, 128)
    return np.where(img >= thr, 255.0 - img, img)


def _posterize(img, rng):
    bits = int(rng.integers(1, 9))
    q = np.clip(img, 0, 255).astype(np.uint8)
    return (q & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.float64)


def _invert(img, rng):
    return 255.0 - img


def _autocontrast(img, rng):
    cutoff = rng.uniform(0, 20)
    out = np.empty_like(img)
    for c in range(3):
        lo, hi = np.percentile(img[..., c], [cutoff, 100 - cutoff])
        out[..., c] = img[..., c] if hi <= lo else (img[..., c] - lo) * (255.0 / (hi - lo))
    return out


def _equalize(img, rng):
    q = np.clip(img, 0, 255).astype(np.uint8)
    out = np.empty(img.shape, dtype=np.float64)
    for c in range(3):
        hist = np.bincount(q[..., c].ravel(), minlength=256)
        cdf = np.cumsum(hist).astype(np.float64)
        nz = cdf[hist > 0]
        lo = nz[0] if nz.size else 0.0
        span = cdf[-1] - lo
        lut = np.arange(256, dtype=np.float64) if span <= 0 else np.clip((cdf - lo) / span * 255.0, 0, 255)
        out[..., c] = lut[q[..., c]]
    return out


def _rotate(img, rng):
    angle = rng.uniform(-45, 45)
    return ndimage.rotate(img, angle, axes=(1, 0), reshape=False, order=1, mode="constant", cval=0.0)


#: The ten augmenters of DRAEM's public code, ``(name, fn(img_float64_0_255, rng) -> img)``.
AUGMENTERS: tuple[tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]], ...] = (
    ("gamma_contrast", _gamma_contrast),
    ("brightness", _brightness),
    ("sharpness", _sharpness),
    ("hue_saturation", _hue_saturation),
    ("solarize", _solarize),
    ("posterize", _posterize),
    ("invert", _invert),
    ("autocontrast", _autocontrast),
    ("equalize", _equalize),
    ("rotate", _rotate),
)


def augment_texture(img: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply ``n_ops`` distinct augmenters, drawn at random from :data:`AUGMENTERS`, in the drawn order."""
    x = np.asarray(img, dtype=np.float64)
    for i in rng.choice(len(AUGMENTERS), size=n_ops, replace=False):
        x = np.clip(AUGMENTERS[int(i)][1](x, rng), 0.0, 255.0)
    return x.astype(np.uint8)


# -------------------------------------------------------------------------------------------- sources
class AnomalySource:
    """A list of anomaly-source textures at one resolution, loaded lazily.

    Args:
        loaders: one zero-argument callable per texture returning an RGB uint8 image of any size.
        size: side length every texture is resized to.
        description: what the source is, for error messages and logs.
    """

    def __init__(self, loaders: Sequence[Callable[[], np.ndarray]], size: int, description: str) -> None:
        if not loaders:
            raise ValueError(f"anomaly source '{description}' has no images")
        self._loaders = list(loaders)
        self.size = int(size)
        self.description = description
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._loaders)

    def image(self, index: int) -> np.ndarray:
        """Texture ``index`` as (size, size, 3) uint8, not augmented."""
        if index not in self._cache:
            img = _to_rgb_uint8(self._loaders[index]())
            if img.shape[:2] != (self.size, self.size):
                img = _resize(img, self.size)
            self._cache[index] = img
        return self._cache[index]

    def sample(self, rng: np.random.Generator, augment: bool = True) -> np.ndarray:
        """A random texture, augmented as DRAEM does (three random augmenters)."""
        img = self.image(int(rng.integers(len(self))))
        return augment_texture(img, rng) if augment else img.copy()


def offline_textures(
    size: int, seed: int = 0, crops_per_photo: int = 4, n_procedural: int = 32
) -> AnomalySource:
    """The offline source: ``crops_per_photo`` random crops of each of :data:`PHOTOS` and
    ``n_procedural`` generated textures (cycling through :data:`PROCEDURAL_KINDS`), all from ``seed``."""
    rng = np.random.default_rng([int(seed), 0xD7D])
    loaders: list[Callable[[], np.ndarray]] = []
    photo_cache: dict[tuple[str, str], np.ndarray] = {}

    def photo(pkg: str, name: str) -> np.ndarray:
        if (pkg, name) not in photo_cache:
            photo_cache[(pkg, name)] = _load_photo(pkg, name)
        return photo_cache[(pkg, name)]

    for pkg, name in PHOTOS:
        for _ in range(crops_per_photo):
            crop_seed = int(rng.integers(2**31))

            def load(pkg=pkg, name=name, crop_seed=crop_seed) -> np.ndarray:
                return _random_crop(photo(pkg, name), np.random.default_rng(crop_seed))

            loaders.append(load)
    for i in range(n_procedural):
        kind = PROCEDURAL_KINDS[i % len(PROCEDURAL_KINDS)]
        tex_seed = int(rng.integers(2**31))

        def make(kind=kind, tex_seed=tex_seed) -> np.ndarray:
            return procedural_texture(kind, size, np.random.default_rng(tex_seed))

        loaders.append(make)
    return AnomalySource(loaders, size, f"offline textures (seed {seed})")


def _dtd_files(root: Path) -> list[Path]:
    for base in (root / "images", root / "dtd" / "images", root):
        files = sorted(p for p in base.glob("*/*.jpg") if p.is_file())
        if files:
            return files
    return []


def dtd_textures(root: str | Path, size: int) -> AnomalySource:
    """The real DTD under ``root``; raises ``FileNotFoundError`` naming the directory if it is missing."""
    root = Path(root)
    files = _dtd_files(root) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"DRAEM anomaly_source 'dtd': no DTD images found under '{root}' (expected "
            f"'{root}/images/<class>/*.jpg' or '{root}/<class>/*.jpg'). Fetch DTD with "
            f"`snakemake download_dtd` ({DTD_URL}) or set the DRAEM param anomaly_source: offline."
        )

    def loader(path: Path) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))

        return load

    return AnomalySource([loader(p) for p in files], size, f"DTD at {root}")


def make_anomaly_source(kind: str, size: int, seed: int = 0, dtd_root: str | Path | None = None) -> AnomalySource:
    """``kind`` is ``"offline"`` or ``"dtd"`` (then ``dtd_root`` is required)."""
    if kind == "offline":
        return offline_textures(size, seed=seed)
    if kind == "dtd":
        if dtd_root is None:
            raise FileNotFoundError(
                "DRAEM anomaly_source 'dtd' needs the param dtd_root (a directory with DTD's images); "
                f"fetch DTD with `snakemake download_dtd` ({DTD_URL}) or use anomaly_source: offline."
            )
        return dtd_textures(dtd_root, size)
    raise ValueError(f"unknown anomaly_source {kind!r}; use 'offline' or 'dtd'")
