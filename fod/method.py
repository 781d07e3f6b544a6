"""FOD as an ``AnomalyMethod``: training on cached backbone features, scoring, checkpoints.

``FOD(params, seed).fit(train).predict(test)``; the model is in ``fod.model``, the losses in
``fod.losses``, the scoring in ``fod.scoring``, the hyper-parameters in ``fod.config``.

Devices (``method.to(device)``): the transformers are built on the CPU (same initialisation everywhere),
then trained and run on ``self.device``, with the training features, the reference (mean or coreset,
computed there) and every scoring batch there; shuffles come from a CPU generator.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from adbench.evaluation.learning import IMAGE_FLOOR, LOCAL_PIXEL_FLOOR
from adbench.evaluation.metrics import roc_auc
from adbench.methods.flat_adam import FlatAdam
from adbench.protocol import AnomalyMethod, NullTracker, Prediction, Split, Tracker, check_finite_losses, state_to_cpu
from fod.config import FODConfig, FODSpec, resolve
from fod.losses import level_losses, reconstruction_error, token_divergence
from fod.model import FODLevel
from fod.reference import coreset_reference, mean_reference
from fod.scoring import correlation_factor, image_scores, level_map, raw_div_scores, token_scores
from fod.tokens import feature_tokens

_LEARNING_PARAMS = {"d_model": [64, 128], "layers": 1, "heads": 4, "epochs": 8, "lr": 2e-3, "progress": False}
# Attention-map elements (per map) per scoring batch: sets the images per batch.  Part of the numbers: an
# image's map depends on its batch's size in the last bits (the matrix products pick kernels by size), so
# 1 << 20 (faster: 0.37 instead of 0.47 s per scoring of the default test split) moved the default
# config's significance table by ~1e-9; changing it means regenerating the golden files.
_EVAL_ELEMENTS = 1 << 24


class FOD(FODSpec, AnomalyMethod):
    """Focus the Discrepancy (Yao et al., ICCV 2023); params: see fod/README.md."""

    loss_terms = ("rec", "loss1", "loss2")
    tiny_params = {"d_model": [16, 32], "heads": 2, "layers": 1, "epochs": 2, "progress": False}
    collapse_hint = (
        "FOD's map is rec x (max(p) - p) with p = softmax(-Div) over an image's tokens: it is constant when the "
        "inter-branch attention diverges from its prior equally at every token (p uniform) or the reconstruction "
        "error is the same everywhere; lower methods.{name}.params.lr, change methods.{name}.params.lambda1 / "
        "lambda2 (the divergence and entropy weights, 0.5 in the paper), or raise methods.{name}.params.epochs")
    #: The learning check (adbench.evaluation.learning; tests/test_learning.py) on the CI data, both variants:
    #: config/config.yaml's fod_budget (d_model 64/128, 1 layer, 4 heads, lr 2e-3) for 8 epochs instead of 4,
    #: about 2.5 s per fit.  Seeds 0-2, native / the pin without MKL_CBWR / the full pin (December 2026,
    #: adbench/evaluation/learning.py has the table); training skipped in brackets:
    #:   official: local pixel AUROC 0.770 / 0.812 / 0.818 (0.405); image 0.717 / 0.616 / 0.708 (0.469), not
    #:             judged: single fits of seeds 0-4 range 0.39-0.84
    #:   paper:    image AUROC 0.752 / 0.745 / 0.778 (0.552), local pixel 0.826 / 0.813 / 0.821 (0.677)
    learning_budget = {
        "default": {"params": _LEARNING_PARAMS, "trains": True, "bars": {"local_pixel_auroc": LOCAL_PIXEL_FLOOR}},
        "paper": {"params": {**_LEARNING_PARAMS, "variant": "paper"}, "trains": True,
                  "bars": {"image_auroc": IMAGE_FLOOR, "local_pixel_auroc": LOCAL_PIXEL_FLOOR}},
    }

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.config: FODConfig = resolve(self.params)
        self.levels: nn.ModuleList | None = None
        self.monitor_best: dict[str, float] = {}

    def fit(self, train: Split, tracker: Tracker | None = None, monitor: Split | None = None) -> "FOD":
        """Train one transformer per feature level on ``train.features``; with ``monitor_every: n`` also
        score ``monitor`` every n epochs and keep the best image and pixel AUROC (reported in
        ``Prediction.extra``, never as the headline)."""
        cfg = self.config
        if cfg.monitor_every and monitor is None:
            raise ValueError("monitor_every > 0 needs fit(..., monitor=<split to score>)")
        tracker = tracker or NullTracker()
        if len(cfg.d_model) != len(train.features):
            raise ValueError(f"d_model has {len(cfg.d_model)} entries for {len(train.features)} feature levels")
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        dev = self.device
        train_features = [f.to(dev) for f in train.features]
        shapes, references = [], []
        for features in train_features:
            ref = self._reference(features, generator) if cfg.inter else None
            n_reference = len(ref[0]) if ref is not None else 0
            grid = list(features.shape[-2:])
            shapes.append({"channels": features.shape[1], "grid": grid, "n_reference": n_reference})
            references.append(ref)
        self.levels = build_levels(self.config, shapes).to(dev)
        for level, ref in zip(self.levels, references):
            if ref is not None:
                level.set_reference(*ref)
        optimizer = level_optimizer(self.levels, cfg.lr)
        self.monitor_best = {}
        steps = math.ceil(len(train) / cfg.batch_size)
        with tqdm(total=cfg.epochs * steps, desc="fod", disable=not cfg.progress) as bar:
            for epoch in range(1, cfg.epochs + 1):
                self.levels.train()
                totals: dict[str, float] = {}
                batches = torch.randperm(len(train), generator=generator).split(cfg.batch_size)
                for step, batch in enumerate(batches, start=1):
                    features = [f[batch.to(dev)] for f in train_features]
                    parts = training_step(self.levels, optimizer, features, cfg)
                    check_finite_losses("FOD", epoch, parts, step)
                    for key, value in parts.items():
                        totals[key] = totals.get(key, 0.0) + value * len(batch)
                    bar.update()
                means = {key: value / len(train) for key, value in totals.items()}
                tracker.log_metrics(means, step=epoch)
                bar.set_postfix(epoch=epoch, rec=f"{means['rec']:.4f}")
                if cfg.monitor_every and epoch % cfg.monitor_every == 0:
                    self._monitor(monitor, epoch, tracker)
        return self

    def predict(self, test: Split) -> Prediction:
        """Image scores (N,) and pixel maps (N, H, W).

        ``extra`` holds the best-on-test monitor numbers, if any, and with ``score: div`` the image and pixel
        AUROC of the raw-divergence score (``fod.scoring.raw_div_scores``) on ``test``'s labels and masks,
        as ``raw_div_image_auroc`` / ``raw_div_pixel_auroc`` (each only when ``test`` has both classes).
        """
        maps, raw_div = self._maps(test, raw_div=self.config.score == "div")
        extra = dict(self.monitor_best)
        if raw_div is not None:
            extra.update({f"raw_div_{kind}_auroc": v for kind, v in split_aurocs(test, raw_div).items()})
        return Prediction(scores=image_scores(maps), maps=maps, extra=extra)

    def state_dict(self) -> dict[str, Any]:
        if self.levels is None:
            raise RuntimeError("FOD has not been fitted")
        shapes = [
            {"channels": lvl.head.out_features, "grid": list(lvl.grid), "n_reference": _n_reference(lvl)}
            for lvl in self.levels
        ]
        return state_to_cpu({
            "config": self.config.as_dict(),
            "shapes": shapes,
            "weights": self.levels.state_dict(),
            "monitor_best": dict(self.monitor_best),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.levels = build_levels(self.config, state["shapes"])
        self.levels.load_state_dict(state["weights"])
        self.monitor_best = dict(state["monitor_best"])

    def _reference(self, features: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.reference == "mean":
            return mean_reference(features, self.config.pool)
        return coreset_reference(features, self.config.pool, generator, self.config.coreset_positions)

    @torch.no_grad()
    def _maps(self, split: Split, raw_div: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, H, W) float32 pixel maps at the split's image size, and with ``raw_div`` (needs a correlation
        branch) the same maps of the raw-divergence token score instead of ``score`` (else None)."""
        if self.levels is None:
            raise RuntimeError("FOD has not been fitted")
        cfg = self.config
        dev = self.device
        self.levels.to(dev).eval()
        size = split.image_size
        maps = torch.zeros(len(split), size, size, device=dev)
        raw_maps = torch.zeros_like(maps) if raw_div else None
        branch = "inter" if cfg.inter else "intra"
        for level, features in zip(self.levels, split.features):
            length = level.grid[0] * level.grid[1]
            per_batch = max(1, _EVAL_ELEMENTS // (cfg.heads * length * length))
            for index in torch.arange(len(split)).split(per_batch):
                tokens = feature_tokens(features[index].to(dev), cfg.pool)
                index = index.to(dev)
                out = level(tokens)
                rec = reconstruction_error(out.recon, tokens, cfg.rec) if cfg.score != "div" else None
                factor = divergence = None
                if cfg.score != "rec" or raw_div:
                    divergence = token_divergence(getattr(out, branch))
                if cfg.score != "rec":
                    factor = correlation_factor(divergence, branch, cfg.corr_score)
                maps[index] += level_map(token_scores(rec, factor), level.grid, size)
                if raw_maps is not None:
                    raw_maps[index] += level_map(raw_div_scores(divergence, branch), level.grid, size)
        maps = (maps / len(self.levels)).cpu().numpy()
        return maps, None if raw_maps is None else (raw_maps / len(self.levels)).cpu().numpy()

    def _monitor(self, split: Split, epoch: int, tracker: Tracker) -> None:
        aurocs = split_aurocs(split, self._maps(split)[0])
        if set(aurocs) != {"image", "pixel"}:
            raise ValueError("the monitor split needs normal and anomalous images and pixels")
        tracker.log_metrics({f"monitor_{k}_auroc": v for k, v in aurocs.items()}, step=epoch)
        for kind, value in aurocs.items():
            if value > self.monitor_best.get(f"best_on_test_{kind}_auroc", -math.inf):
                self.monitor_best[f"best_on_test_{kind}_auroc"] = value
                self.monitor_best[f"best_on_test_{kind}_epoch"] = float(epoch)


def split_aurocs(split: Split, maps: np.ndarray) -> dict[str, float]:
    """{"image": AUROC of the image scores (``image_scores(maps)``) on ``split.labels``, "pixel": AUROC of
    the (N, H, W) ``maps`` on ``split.masks``}, each only when both classes are present."""
    aurocs = {}
    if 0 < split.labels.sum() < len(split.labels):
        aurocs["image"] = roc_auc(split.labels, image_scores(maps))
    masks = split.masks.numpy().ravel()
    if 0 < masks.sum() < masks.size:
        aurocs["pixel"] = roc_auc(masks, maps.ravel())
    return aurocs


def build_levels(cfg: FODConfig, shapes: list[dict[str, Any]]) -> nn.ModuleList:
    """One ``FODLevel`` per entry of ``shapes`` ({"channels": C, "grid": [H, W], "n_reference": N}), fine to coarse."""
    return nn.ModuleList(
        FODLevel(
            channels=shape["channels"],
            grid=tuple(shape["grid"]),
            d_model=d_model,
            heads=cfg.heads,
            layers=cfg.layers,
            ffn_ratio=cfg.ffn_ratio,
            intra=cfg.intra,
            inter=cfg.inter,
            residual=cfg.residual,
            isotropic=cfg.prior == "isotropic",
            n_reference=shape["n_reference"],
        )
        for shape, d_model in zip(shapes, cfg.d_model, strict=True)
    )


def level_optimizer(levels: nn.ModuleList, lr: float) -> FlatAdam:
    """FOD's optimizer: Adam with each level's parameters in one buffer (``adbench.methods.flat_adam``), the
    same numbers as ``torch.optim.Adam(levels.parameters(), fused=True)`` with one kernel call per level where that
    makes one per tensor (32 per level at the default)."""
    return FlatAdam([level.parameters() for level in levels], lr=lr)


def training_step(
    levels: nn.ModuleList, optimizer: torch.optim.Optimizer, features: list[torch.Tensor], cfg: FODConfig
) -> dict[str, float]:
    """One optimisation step on a batch: features[l] (B, C_l, H_l, W_l) per level.

    Per level one backward pass of loss1 + loss2 (``fod.losses.LevelLosses``); the gradient is the mean
    over the batch of the per-image gradients.  ``level_steps``: ``joint`` takes one optimizer step after
    all levels; ``per_level`` does what the authors' code does under its pinned torch 1.13, whose
    ``zero_grad()`` zeroes gradients instead of dropping them: zero, backward and step level by level, so
    that every step also moves the other levels' parameters on their Adam momentum.
    Returns each loss part averaged over the levels.
    """
    per_level = cfg.level_steps == "per_level"
    if not per_level:
        optimizer.zero_grad(set_to_none=True)
    parts = []
    for level, level_features in zip(levels, features):
        if per_level:
            optimizer.zero_grad(set_to_none=False)
        target = feature_tokens(level_features, cfg.pool)
        losses = level_losses(level(target), target, cfg)
        (losses.loss1 + losses.loss2).backward()
        parts.append(losses.parts)
        if per_level:
            optimizer.step()
    if not per_level:
        optimizer.step()
    return {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}


def _n_reference(level: FODLevel) -> int:
    return level.reference.shape[0] if level.with_inter else 0
