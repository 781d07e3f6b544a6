"""DRAEM (Zavrtanik, Kristan, Skočaj, ICCV 2021) for the suite's fit/predict protocol.

A reconstructive encoder-decoder learns to restore images in which synthetic anomalies were planted, and
a discriminative U-Net, fed the (possibly defective) image and its reconstruction, learns to segment the
planted regions.  At test time the segmentation output is the anomaly map.

Faithful to the authors' public code (facts read from it, code written anew)
---------------------------------------------------------------------------
- Reconstructive subnetwork: encoder of five double conv3x3-BN-ReLU blocks (widths w, 2w, 4w, 8w, 8w,
  max-pooling between, bottleneck at stride 16), decoder of four (bilinear x2 upsampling, conv, double
  conv) stages back to w channels, final conv3x3 to 3 channels, no skip connections; ``base_width`` w = 128.
- Discriminative subnetwork: U-Net with six encoder blocks (b, 2b, 4b, 8b, 8b, 8b; five poolings) and
  skip-concatenating decoder, 6-channel input (reconstruction, then image) and 2-class output; b = 64.
- Initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0.
- Synthetic anomalies (:mod:`baselines.perlin`, :mod:`baselines.anomaly_source`): the normal image is
  first resized to the network resolution and rotated by U(-90, 90) deg with probability 0.3 (corners
  filled with 0); then, at that resolution, a Perlin mask (per-axis scales 2^0..2^5, rotation +-90 deg,
  threshold 0.5) is filled with an anomaly-source texture augmented by 3 of 10 random augmenters, blended
  as ``img*(1-m) + (1-beta)*tex*m + beta*img*m`` with beta ~ U[0, 0.8); half the samples are left clean
  (target mask all zero).  The mask is made at the resolution the networks see, so image and target are
  pixel-aligned without resizing either.  Mask 1 = anomalous.  The Perlin blobs may fall anywhere in the
  image, on an object or on a plain background alike (the public code has no foreground mask).  Images
  are in [0, 1] (no ImageNet normalisation).
- Loss: MSE + (1 - SSIM) (Gaussian 11x11 window, sigma 1.5, data range detected from the reconstruction as
  in the public code) between reconstruction and clean image, plus focal loss (gamma 2, label smoothing
  1e-5, alpha 1, on the softmax output; target class = mask value, so channel 1 is the anomaly class)
  between segmentation and mask.
- Adam, lr 1e-4 for both networks, lr x0.2 at 80% and 90% of the epochs (stepped per epoch); batch 8;
  700 epochs (:data:`PAPER_PARAMS`).
- Test: networks in eval mode (BatchNorm running statistics); pixel map = softmax probability of channel
  1, the anomaly class (in [0, 1]); image score = maximum of that map after a mean filter (stride 1, zero
  padding counted, as ``avg_pool2d(..., k, 1, k // 2)``), k = 21 px at the public code's 256 px.  With
  ``score_filter_scale: resolution`` (default) k keeps that share of the image at other evaluation
  resolutions (:func:`score_filter_px`: 11 px at 128 px, 5 at 64); ``pixels`` applies 21 px literally,
  which at 128 px covers four times the relative area (on the embedded default, 11 budgets of 7-40
  epochs, 1-3 seeds each: the scaled filter's mean image AUROC was higher in 9, by 0.012 on average).

Adapted
-------
- Resolution: the public code resizes everything to 256 px; here the split's evaluation resolution is
  used (256 px in the paper config), or the smaller network resolution of param ``resolution`` (a
  multiple of 32; see the reduced budget).  Maps are always returned at the split's resolution
  (bilinear upsampling of the anomaly-class probability), and the score filter is applied there.
- Anomaly source: DTD is not downloadable on the development machines; the default
  ``anomaly_source: offline`` uses packaged photographs and procedural textures
  (:mod:`baselines.anomaly_source`); ``anomaly_source: dtd`` with ``dtd_root`` uses the real DTD.  The
  imgaug augmenters are re-implemented (imgaug is not a dependency).
- Sampling: each epoch visits every training image once in a seeded random order (the public data loader
  draws image indices with replacement); all randomness comes from ``seed``.
- Channel order RGB (the public code reads BGR with OpenCV; immaterial for a network trained from
  scratch).  ``method.to(device)`` (the config's top-level ``device`` setting; the ``device`` param of
  earlier versions is gone) moves training and inference, and a ``feature_extractor`` module, to a GPU;
  the networks are initialised on the CPU, and synthetic anomalies are always made on the CPU.
- "Same backbone as in our model" (the FOD paper's claim for all baselines).  DRAEM has no backbone.  The
  suite offers two readings through the param ``reconstruction``:

  * ``scratch`` (default, used in the tables): the original from-scratch reconstructive network.  The
    shared backbone plays no part; this is the DRAEM the paper's numbers were published for, and the
    suite reports it as such.
  * ``backbone``: the reconstructive encoder is the frozen ImageNet backbone, i.e. the decoder starts from
    the backbone's stride-16 feature map (a 1x1 conv adapter to 8w channels, then the public decoder; the
    stride-16 bottleneck matches DRAEM's own).  Training needs backbone features of *augmented* images,
    which the feature cache cannot hold, so the runner must set ``method.feature_extractor``: a callable
    mapping float images (n, 3, H, W) in [0, 1] to the cache's list of per-level maps (the contract of
    ``adbench.features.backbone.Backbone.forward``, which normalises internally); it is fed the augmented images
    (made at the network resolution) bilinearly resized to the split's resolution.  At test
    time the cached features of the (unaltered) test images are used.  Not the default because a frozen
    encoder cannot learn to suppress anomalies, which removes the reconstructive half of the method's idea.
- Speed only (same maths up to rounding): the networks' weights are kept channels-last (oneDNN's faster
  convolution layout on CPUs) and Adam is torch's fused implementation.

Reduced budget (:data:`DEFAULT_PARAMS`, for the embedded benchmark on 2 CPU cores)
-------------------------------------------------------------------------------
``base_width`` 128 -> 8, discriminator ``disc_base_width`` 64 -> 8, ``epochs`` 700 -> 10, ``batch_size``
8 -> 2 (300 optimiser steps on 60 training images: the number of steps, not of epochs, is what keeps the
maps from inverting, see below), ``lr`` 1e-4 -> 1e-3 (a ten times larger step for a 70 times shorter
schedule), ``resolution`` image size -> 64
px: the training images are downsampled to 64 px before the synthetic anomalies are made, test images
are downsampled likewise, and the anomaly-class probability is bilinearly upsampled back to the split's
resolution before the score filter (a 4x cheaper step).  Losses, schedule shape,
synthetic anomalies and scoring are unchanged.  :data:`PAPER_PARAMS` restores the public values
(``resolution: None``, i.e. the networks run at the split's resolution, 256 px in the paper config).

Too short a schedule gives *inverted* maps
------------------------------------------
Normal pixels make up nearly all of every training image, so the focal loss's first steps lower the
anomaly logit everywhere, fastest where the discriminator's activations are largest: at high-contrast
structure.  Until the network has learned the reconstruction-discrepancy cue, the map therefore
*anti*-correlates with local contrast, and the local defects (dark spots, bright scratches: high
contrast) score below their plain surroundings.  Measured at the CI size (16 training images, 64 px),
coins and tray, seeds 0-2: after 14 steps (the former 7 epochs of
batch 8) the Spearman correlation of the map with the gradient magnitude of the normal test images is
-0.25 to -0.57 and every local-defect pixel AUROC is inverted (0.20-0.43); after 80 steps of 4 it is
+0.22 to +0.60 and the AUROCs are 0.67-0.90 (seeds 3-6: 0.57-0.90 with AVX2 kernels, down to
0.50 with AVX-512).  BatchNorm running statistics
that lag the fast-changing weights sharpen the effect (recomputing them after training lifted coins'
seed 0 from 0.37 to 0.82).  No discrepancy with the public code was found behind it: anomaly channel
(1), mask convention (1 = anomalous), image-mask alignment, focal targets, [0, 1] inputs, eval-mode
BatchNorm and Perlin blobs anywhere in the image (no foreground mask) all match.  It is a matter of
optimiser steps, which the budget must buy (tests/test_learning.py checks that the default budget's local-
defect maps sit above chance at the CI size: :attr:`DRAEM.learning_budget`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from adbench.evaluation.learning import IMAGE_FLOOR, LOCAL_PIXEL_FLOOR
from adbench.protocol import AnomalyMethod, Prediction, Split, Tracker, check_finite_losses, epoch_means
from baselines.anomaly_source import AnomalySource, make_anomaly_source
from baselines.perlin import perlin_mask
from baselines.specs.draem import DEFAULT_PARAMS, PAPER_PARAMS, PUBLIC_IMAGE_SIZE, SCORE_FILTER_SCALES, DRAEMSpec

__all__ = [
    "DRAEM",
    "DEFAULT_PARAMS",
    "PAPER_PARAMS",
    "ReconstructiveNetwork",
    "FeatureReconstructiveNetwork",
    "DiscriminativeNetwork",
    "ssim_loss",
    "focal_loss",
    "synthesize_anomaly",
    "score_filter_px",
    "lr_milestone_epochs",
]

# ================================================================================ networks (pure torch)
def _double_conv(cin: int, cmid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cmid, 3, padding=1),
        nn.BatchNorm2d(cmid),
        nn.ReLU(inplace=True),
        nn.Conv2d(cmid, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ReconstructiveDecoder(nn.Module):
    """``n_up`` stages of (upsample x2, conv, double conv) from 8w channels down to w, then conv to 3."""

    def __init__(self, base_width: int, out_channels: int = 3, n_up: int = 4) -> None:
        super().__init__()
        w = base_width
        # channel plan of the public decoder for n_up = 4: 8w -> 4w -> 2w -> w -> w
        plan = [8 * w, 4 * w, 2 * w, w, w]
        if n_up != 4:
            plan = [8 * w] + [max(w, 8 * w // 2 ** (i + 1)) for i in range(n_up)]
        self.stages = nn.ModuleList(
            nn.Sequential(_up_conv(plan[i], plan[i]), _double_conv(plan[i], plan[i], plan[i + 1]))
            for i in range(n_up)
        )
        self.out = nn.Conv2d(plan[-1], out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            h = stage(h)
        return self.out(h)


class ReconstructiveNetwork(nn.Module):
    """DRAEM's reconstructive subnetwork: plain encoder-decoder, bottleneck at stride 16, no skips."""

    def __init__(self, base_width: int = 128, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        w = base_width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        cins = [in_channels] + widths[:-1]
        self.blocks = nn.ModuleList(_double_conv(ci, co, co) for ci, co in zip(cins, widths))
        self.decoder = _ReconstructiveDecoder(w, out_channels, n_up=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
        return self.decoder(h)


class FeatureReconstructiveNetwork(nn.Module):
    """The ``reconstruction: backbone`` variant: decoder from a frozen backbone's feature map.

    ``forward`` takes the feature map at ``stride`` (n, C, H/stride, W/stride) and returns the image.
    """

    def __init__(self, feature_channels: int, stride: int = 16, base_width: int = 128, out_channels: int = 3):
        super().__init__()
        n_up = int(round(math.log2(stride)))
        if 2**n_up != stride:
            raise ValueError(f"backbone_stride must be a power of two, got {stride}")
        self.adapter = nn.Sequential(
            nn.Conv2d(feature_channels, 8 * base_width, 1), nn.BatchNorm2d(8 * base_width), nn.ReLU(inplace=True)
        )
        self.decoder = _ReconstructiveDecoder(base_width, out_channels, n_up=n_up)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.adapter(features))


class DiscriminativeNetwork(nn.Module):
    """DRAEM's discriminative U-Net: six encoder blocks, five skip-concatenating decoder stages."""

    def __init__(self, in_channels: int = 6, out_channels: int = 2, base_width: int = 64) -> None:
        super().__init__()
        b = base_width
        enc = [b, 2 * b, 4 * b, 8 * b, 8 * b, 8 * b]
        cins = [in_channels] + enc[:-1]
        self.enc = nn.ModuleList(_double_conv(ci, co, co) for ci, co in zip(cins, enc))
        dec = [8 * b, 4 * b, 2 * b, b, b]  # output width of each decoder stage
        skips = enc[-2::-1]  # b5, b4, b3, b2, b1 widths: 8b, 8b, 4b, 2b, b
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = enc[-1]
        for cout, skip in zip(dec, skips):
            self.up.append(_up_conv(cin, cout))
            self.dec.append(_double_conv(cout + skip, cout, cout))
            cin = cout
        self.out = nn.Conv2d(dec[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for i, block in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            feats.append(h)
        h = feats.pop()
        for up, dec in zip(self.up, self.dec):
            h = dec(torch.cat([up(h), feats.pop()], dim=1))
        return self.out(h)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ====================================================================================== losses
def _gaussian_1d(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_loss(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """1 - mean SSIM, per channel, Gaussian window (sigma 1.5) with zero padding.

    As in the public code the data range L is detected from ``img1``: 255 if its max exceeds 128 else 1,
    minus -1 if its min is below -0.5 else 0.  The 2-D Gaussian window is applied as two 1-D passes (the
    same result up to rounding, about four times faster on a CPU).
    """
    c = img1.shape[1]
    with torch.no_grad():
        hi = 255.0 if float(img1.max()) > 128 else 1.0
        lo = -1.0 if float(img1.min()) < -0.5 else 0.0
    rng = hi - lo
    g = _gaussian_1d(window_size).to(img1)
    pad = window_size // 2
    stack = torch.cat([img1, img2, img1 * img1, img2 * img2, img1 * img2], dim=1)
    k = stack.shape[1]
    blurred = F.conv2d(stack, g.view(1, 1, -1, 1).expand(k, 1, -1, 1), padding=(pad, 0), groups=k)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, -1).expand(k, 1, 1, -1), padding=(0, pad), groups=k)
    mu1, mu2, e11, e22, e12 = blurred.split(c, dim=1)
    s11, s22, s12 = e11 - mu1 * mu1, e22 - mu2 * mu2, e12 - mu1 * mu2
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    ssim = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return 1.0 - ssim.mean()


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities (n, C, H, W) against integer targets (n, 1, H, W).

    The one-hot target is clamped to [smooth / (C - 1), 1 - smooth] and ``smooth`` is added to p_t, as in
    the loss the public code uses.
    """
    n_cls = probs.shape[1]
    target = F.one_hot(mask[:, 0].long(), n_cls).permute(0, 3, 1, 2).to(probs)
    target = target.clamp(smooth / (n_cls - 1), 1.0 - smooth)
    pt = (target * probs).sum(dim=1) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


# =========================================================================== synthetic anomalies
def _rotate_image(img: np.ndarray, angle: float) -> np.ndarray:
    return ndimage.rotate(img, angle, axes=(1, 0), reshape=False, order=1, mode="constant", cval=0.0)


def synthesize_anomaly(
    image: np.ndarray, source: AnomalySource, rng: np.random.Generator, cfg: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One DRAEM training sample from a normal image (H, W, 3) float in [0, 1].

    Returns ``(target, augmented, mask)``: the (possibly rotated) clean image, the image with a planted
    anomaly (or the clean image, with probability ``clean_fraction``) and the (H, W) float32 mask.
    """
    if rng.random() < cfg["rotate_normal_p"]:
        deg = cfg["rotate_normal_deg"]
        image = _rotate_image(image, float(rng.uniform(-deg, deg)))
    image = image.astype(np.float32)
    h, w = image.shape[:2]
    if rng.random() < cfg["clean_fraction"]:
        return image, image, np.zeros((h, w), np.float32)
    mask = perlin_mask(
        (h, w),
        rng,
        scale_exponents=tuple(cfg["perlin_scale_exponents"]),
        threshold=cfg["perlin_threshold"],
        rotation=cfg["perlin_rotation_deg"],
    )
    texture = source.sample(rng).astype(np.float32) / 255.0
    if texture.shape[:2] != (h, w):
        raise ValueError(f"anomaly source size {texture.shape[:2]} does not match the image size {(h, w)}")
    beta = float(rng.uniform(0.0, 1.0)) * cfg["beta_max"]
    m = mask[..., None]
    augmented = image * (1 - m) + (1 - beta) * texture * m + beta * image * m
    return image, augmented.astype(np.float32), mask


# ======================================================================================= method
def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def score_filter_px(size: int, scale: str, image_size: int) -> int:
    """Side (px, odd) of the image score's mean filter on maps of ``image_size`` px.

    ``scale``: ``"pixels"``: ``size`` as given; ``"resolution"``: ``size`` is the side at the public code's
    256 px and keeps its share of the image, ``size * image_size / 256`` rounded to the nearest odd integer
    (21 px: 11 at 128 px, 5 at 64 px, 19 at 224 px).
    """
    if scale not in SCORE_FILTER_SCALES:
        raise ValueError(f"score_filter_scale must be one of {', '.join(SCORE_FILTER_SCALES)}, not {scale!r}")
    if scale == "pixels":
        return int(size)
    return 2 * math.floor((size * image_size / PUBLIC_IMAGE_SIZE - 1) / 2 + 0.5) + 1


def lr_milestone_epochs(fractions: list[float], epochs: int) -> list[int]:
    """The epochs after which the learning rate drops: ``fractions`` of ``epochs``, rounded to whole epochs.

    The public code passes ``epochs * 0.8`` and ``epochs * 0.9`` to ``MultiStepLR`` unrounded: at its 700
    epochs they are whole (560.0, 630.0) and fire, but at a reduced budget such as 7 epochs (5.6, 6.3) an
    epoch count never equals them and the rate never drops.  Rounding keeps the public schedule where it
    was whole and makes it fire at every budget.
    """
    return [int(round(f * epochs)) for f in fractions]


class DRAEM(DRAEMSpec, AnomalyMethod):
    """DRAEM; ``DRAEM(params, seed).fit(train).predict(test)``.  Params: :data:`DEFAULT_PARAMS`.

    Attributes:
        feature_extractor: for ``reconstruction: backbone`` only, set by the runner before ``fit``: maps
            float32 images (n, 3, H, W) in [0, 1] to the list of per-level feature maps the cache holds
            (same backbone, same levels), e.g. an ``adbench.features.backbone.Backbone``.
        history: mean training loss per epoch (after ``fit``; restored by ``load_state_dict``).
    """

    loss_terms = ("loss", "l2", "ssim", "focal")
    tiny_params = {"epochs": 2, "batch_size": 2, "resolution": 32, "progress": False}
    collapse_hint = (
        "DRAEM's map is its discriminative network's anomaly probability: it is constant when the segmentation "
        "collapsed to one class everywhere; lower methods.{name}.params.lr, raise methods.{name}.params.epochs, "
        "and check that its synthetic anomalies are visible (methods.{name}.params.beta_max, perlin_threshold, "
        "anomaly_source): with nothing to segment it learns to call every pixel normal")
    #: The learning check (adbench.evaluation.learning; tests/test_learning.py) on the CI data: 15 epochs of batch 2 (120
    #: steps at 16 images; the default's 10 epochs leave 0.688 with AVX2 kernels), 6-7 s per fit.  Judged on its
    #: maps: local pixel AUROC, seeds 0-2, native / the pin without MKL_CBWR / the full pin (December 2026):
    #: 0.857 / 0.745 / 0.745, training skipped 0.492 (too few steps invert the maps: "Too short a schedule"
    #: above).  Single fits range 0.42-0.98, so three other seeds can come out lower (0.711 pinned).  Its image
    #: score is not judged: 0.769 / 0.793 / 0.793, single fits 0.31-0.99, too noisy at 20 test images to sit
    #: reliably above the floor.
    learning_budget = {"default": {"params": {"epochs": 15, "batch_size": 2, "lr": 1e-3, "progress": False},
                                   "trains": True, "bars": {"local_pixel_auroc": LOCAL_PIXEL_FLOOR}}}

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        seed: int = 0,
        feature_extractor: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> None:
        super().__init__(self.check_params(params), seed)
        self.cfg: dict[str, Any] = self.params
        self.feature_extractor = feature_extractor
        self.recon: nn.Module | None = None
        self.disc: nn.Module | None = None
        self.arch: dict[str, Any] = {}
        self.history: list[float] = []
        self.history_terms: list[dict[str, float]] = []

    # -------------------------------------------------------------------------------------- helpers
    def _build(self, arch: dict[str, Any]) -> None:
        if arch["reconstruction"] == "scratch":
            self.recon = ReconstructiveNetwork(arch["base_width"])
        else:
            self.recon = FeatureReconstructiveNetwork(
                arch["feature_channels"], arch["backbone_stride"], arch["base_width"]
            )
        self.disc = DiscriminativeNetwork(6, 2, arch["disc_base_width"])
        self.arch = dict(arch)

    @staticmethod
    def _level(split: Split, stride: int) -> int:
        """Index of the split's feature level at ``stride``."""
        if stride not in tuple(split.strides):
            raise ValueError(
                f"DRAEM reconstruction 'backbone' needs features at stride {stride}; split has {split.strides}"
            )
        return tuple(split.strides).index(stride)

    def _extract(self, x: torch.Tensor) -> torch.Tensor | None:
        """Backbone features of training images ``x`` (network resolution), resized to the split's
        resolution first as the cache's features are (``backbone`` variant only)."""
        if self.arch["reconstruction"] == "scratch":
            return None
        if self.feature_extractor is None:
            raise RuntimeError(
                "DRAEM with reconstruction 'backbone' needs method.feature_extractor (a callable mapping images "
                "in [0, 1] to the cache's per-level features, e.g. adbench.features.backbone.Backbone) to train on "
                "augmented images"
            )
        with torch.no_grad():
            feats = self.feature_extractor(_resize(x, self.arch["image_size"]))
        return feats[self.arch["level"]].float().to(x.device)

    def _reconstruct(self, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """Reconstruction of ``x`` (network resolution) from ``x`` itself or from its backbone features."""
        if self.arch["reconstruction"] == "scratch":
            return self.recon(x)
        if features.shape[1] != self.arch["feature_channels"]:
            raise ValueError(
                f"backbone features have {features.shape[1]} channels, the model was built for "
                f"{self.arch['feature_channels']} ({self.arch.get('backbone')})"
            )
        rec = self.recon(features)
        if rec.shape[-2:] != x.shape[-2:]:
            rec = F.interpolate(rec, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return rec

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, train: Split, tracker: Tracker | None = None) -> "DRAEM":
        cfg = self.cfg
        size = train.image_size
        res = int(cfg["resolution"] or size)
        if train.images.shape[-2] != size or res % 32:
            raise ValueError(
                f"DRAEM needs square images and a network resolution divisible by 32, got images "
                f"{tuple(train.images.shape[-2:])} and resolution {res}"
            )
        arch = {
            "reconstruction": cfg["reconstruction"],
            "base_width": int(cfg["base_width"]),
            "disc_base_width": int(cfg["disc_base_width"]),
            "image_size": size,
            "resolution": res,
            "score_filter_size": int(cfg["score_filter_size"]),
            "score_filter_scale": cfg["score_filter_scale"],
            "backbone_stride": int(cfg["backbone_stride"]),
            "backbone": train.backbone,
        }
        if cfg["reconstruction"] == "backbone":
            level = self._level(train, arch["backbone_stride"])
            arch["level"] = level
            arch["feature_channels"] = int(train.features[level].shape[1])
        # as in the public code, images are resized to the network resolution first and the synthetic
        # anomalies (texture, Perlin mask) are made at that resolution: image and mask stay pixel-aligned
        source = make_anomaly_source(cfg["anomaly_source"], res, seed=self.seed, dtd_root=cfg["dtd_root"])
        rng = np.random.default_rng([self.seed, 0xD4AE])
        images = _resize(_to_unit(train.images), res).permute(0, 2, 3, 1).numpy()  # (N, res, res, 3)
        n = len(images)
        bs = int(cfg["batch_size"])
        epochs = int(cfg["epochs"])

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._build(arch)
            self.recon.apply(_init_weights)
            self.disc.apply(_init_weights)
        dev = self.device
        # channels-last weights make the CPU's (oneDNN) convolutions about a quarter faster; same maths
        self.recon.to(dev, memory_format=torch.channels_last)
        self.disc.to(dev, memory_format=torch.channels_last)
        if isinstance(self.feature_extractor, nn.Module):
            self.feature_extractor.to(dev)
        params = [
            {"params": self.recon.parameters(), "lr": cfg["lr"]},
            {"params": self.disc.parameters(), "lr": cfg["lr"]},
        ]
        opt = torch.optim.Adam(params, lr=cfg["lr"], fused=True)  # one kernel per step instead of one per tensor
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, lr_milestone_epochs(cfg["lr_milestones"], epochs),
                                                     gamma=cfg["lr_gamma"])

        self.recon.train()
        self.disc.train()
        self.history, self.history_terms = [], []
        bar = tqdm(range(epochs), desc="draem", disable=not cfg["progress"], leave=False)
        for epoch in bar:
            sums = {"loss": 0.0, "l2": 0.0, "ssim": 0.0, "focal": 0.0}
            steps = 0
            order = rng.permutation(n)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                samples = [synthesize_anomaly(images[i], source, rng, cfg) for i in idx]
                target = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).to(dev)
                aug = torch.from_numpy(np.stack([s[1] for s in samples])).permute(0, 3, 1, 2).to(dev)
                mask = torch.from_numpy(np.stack([s[2] for s in samples]))[:, None].to(dev)
                feats = self._extract(aug)

                rec = self._reconstruct(aug, feats)
                probs = torch.softmax(self.disc(torch.cat([rec, aug], dim=1)), dim=1)
                l2 = F.mse_loss(rec, target)
                ls = ssim_loss(rec, target, int(cfg["ssim_window"]))
                lf = focal_loss(probs, mask, float(cfg["focal_gamma"]))
                loss = l2 + ls + lf
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                terms = {k: float(v.detach()) for k, v in (("loss", loss), ("l2", l2), ("ssim", ls), ("focal", lf))}
                check_finite_losses("DRAEM", epoch + 1, terms, steps + 1)
                for k, v in terms.items():
                    sums[k] += v
                steps += 1
            sched.step()
            means = epoch_means(sums, steps, epoch, tracker)
            self.history.append(means["loss"])
            self.history_terms.append(means)
            bar.set_postfix(loss=f"{means['loss']:.4f}")
        bar.close()
        return self

    # -------------------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, test: Split) -> Prediction:
        if self.recon is None:
            raise RuntimeError("DRAEM.predict called before fit/load_state_dict")
        dev = self.device
        self.recon.to(dev, memory_format=torch.channels_last).eval()
        self.disc.to(dev, memory_format=torch.channels_last).eval()
        # models saved before the param existed used the literal size
        k = score_filter_px(int(self.arch["score_filter_size"]), self.arch.get("score_filter_scale", "pixels"),
                            test.image_size)
        bs = int(self.cfg["predict_batch_size"])
        level = None
        if self.arch["reconstruction"] == "backbone":
            if test.backbone != self.arch.get("backbone"):
                raise ValueError(f"model trained on {self.arch.get('backbone')} features, split has {test.backbone}")
            level = self._level(test, int(self.arch["backbone_stride"]))
        maps, scores = [], []
        res = int(self.arch["resolution"])
        for start in range(0, len(test), bs):
            x_full = _to_unit(test.images[start : start + bs]).to(dev)
            x = _resize(x_full, res)
            feats = None if level is None else test.features[level][start : start + bs].float().to(dev)
            rec = self._reconstruct(x, feats)
            prob = torch.softmax(self.disc(torch.cat([rec, x], dim=1)), dim=1)[:, 1:]
            if prob.shape[-2:] != x_full.shape[-2:]:
                prob = F.interpolate(prob, size=x_full.shape[-2:], mode="bilinear", align_corners=False)
            smoothed = F.avg_pool2d(prob, k, stride=1, padding=k // 2, count_include_pad=True)
            scores.append(smoothed.amax(dim=(1, 2, 3)).double().cpu())
            maps.append(prob[:, 0].cpu())
        return Prediction(scores=torch.cat(scores).numpy(), maps=torch.cat(maps).numpy())

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.recon is None:
            raise RuntimeError("DRAEM has no state before fit")
        return {
            "arch": dict(self.arch),
            "recon": {k: v.detach().cpu().clone() for k, v in self.recon.state_dict().items()},
            "disc": {k: v.detach().cpu().clone() for k, v in self.disc.state_dict().items()},
            "history": list(self.history),
            "history_terms": [dict(h) for h in self.history_terms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build(state["arch"])
        self.recon.load_state_dict(state["recon"])
        self.disc.load_state_dict(state["disc"])
        self.recon.eval()
        self.disc.eval()
        self.history = list(state.get("history", []))
        self.history_terms = [dict(h) for h in state.get("history_terms", [])]
