"""Time and memory of one FOD training step: this suite's implementation against the authors' computation.

Shapes (batch 1, 3 layers, 8 heads, both branches, mean reference, official variant):
  paper:   256 px, wide_resnet50_2 channels: stride 8 = 32x32 tokens, 512 ch, d_model 256;
           stride 16 = 16x16 tokens, 1024 ch, d_model 512.
  default: 128 px, tf_efficientnet_lite0 channels: 16x16 tokens, 40 ch, d_model 256; 8x8 tokens, 112 ch, d_model 512.

``ours`` is ``fod.method.training_step``.  ``authors`` re-implements the authors' computation style on the
same parameters (``authors_step``): prior from repeated full (B, heads, L, L) tensors, row sums repeated,
four KL evaluations per map, the discarded attention output projection, two backward passes per level
and one optimizer step per level with gradients zeroed, not dropped (torch 1.13).  The backbone is
excluded from both: each step starts from cached features, as the suite's training does (DESIGN.md
sec. 10 gives the backbone's own cost, which would add equally to both sides).

Both run as the workflow's jobs compute (subnormals flushed), under each of glibc's two malloc settings
(``adbench.methods.malloc``): ``retain``, the jobs' (freed memory reused), and ``system``, glibc's defaults, in
which every tensor above 32 MiB is a fresh mapping whose pages fault again on every step.  The authors'
computation allocates several times as much per step, so the setting moves its time far more than ours
(2 threads here, paper shapes: 9.8 s under ``system``, 2.6 s under ``retain``); the ratio is reported
per setting.

Every (shape, malloc, implementation) cell runs in a subprocess of its own, so that peak RSS (getrusage)
is not shared.  Writes JSON to ``--out`` and a markdown table next to it (same name, ``.md``).

    python benchmarks/bench_fod_step.py [--quick] [--threads N] [--malloc retain system]
                                        [--out results/benchmarks/fod_step.json]

``--quick`` (a smoke test: one warm-up and one timed step per cell) measures the default shape only: the
paper shape's authors' step alone needs about 7 GB and 8 s or more per step here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adbench.methods.determinism import flush_denormals  # noqa: E402
from adbench.methods.malloc import VARIABLE as MALLOC_VARIABLE, retain_freed_memory  # noqa: E402
from fod.config import resolve  # noqa: E402
from fod.method import build_levels, level_optimizer, training_step  # noqa: E402
from fod.tokens import feature_tokens, grid_positions  # noqa: E402

SHAPES = {
    "paper": [(512, (32, 32), 256), (1024, (16, 16), 512)],  # (channels, grid, d_model) per level
    "default": [(40, (16, 16), 256), (112, (8, 8), 512)],
}


def setup(shape: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.ModuleList, list[torch.Tensor]]:
    """Official-variant levels for ``shape`` with a random mean reference, and one image's random features."""
    torch.manual_seed(seed)
    cfg = resolve({"d_model": [d for _, _, d in SHAPES[shape]]})
    levels = build_levels(
        cfg, [{"channels": c, "grid": list(g), "n_reference": g[0] * g[1]} for c, g, _ in SHAPES[shape]]
    ).to(dtype)
    for level, (channels, grid, _) in zip(levels, SHAPES[shape]):
        level.set_reference(torch.randn(grid[0] * grid[1], channels, dtype=dtype), grid_positions(*grid))
    features = [torch.randn(1, c, *g, dtype=dtype).relu() for c, g, _ in SHAPES[shape]]
    return levels, features


# ---- the authors' computation style -------------------------------------------------------------------


def squared_distances(height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) squared column and row distances between the tokens of an (H, W) grid (their .npy files)."""
    cells = grid_positions(height, width).to(dtype)
    return (cells[:, None, 1] - cells[None, :, 1]) ** 2, (cells[:, None, 0] - cells[None, :, 0]) ** 2


def _authors_attention(att, out_proj, query, context, dist_x, dist_y):
    """One of their Attention2D calls on our parameters: returns (output, maps, unnormalised target)."""
    batch, length, _ = query.shape
    keys, heads = context.shape[1], att.heads
    sigma = att.sigma(query).view(batch, length, heads, -1)
    q = att.q(query).view(batch, length, heads, -1)
    k = att.k(context).view(batch, keys, heads, -1)
    v = att.v(context).view(batch, keys, heads, -1)
    logits = torch.einsum("blhe,bshe->bhls", q, k) / math.sqrt(q.shape[-1])
    sigma = torch.pow(3, torch.sigmoid(sigma.transpose(1, 2) * 5) + 1e-5) - 1
    sigma_y = sigma[..., 0].unsqueeze(-1).repeat(1, 1, 1, length)
    sigma_x = sigma[..., 1].unsqueeze(-1).repeat(1, 1, 1, length)
    dx = dist_x.unsqueeze(0).unsqueeze(0).repeat(batch, heads, 1, 1)
    dy = dist_y.unsqueeze(0).unsqueeze(0).repeat(batch, heads, 1, 1)
    target = 1.0 / (2 * math.pi * sigma_y * sigma_x) * torch.exp(-dy / (2 * sigma_y**2) - dx / (2 * sigma_x**2))
    maps = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhls,bshd->blhd", maps, v).contiguous().view(batch, length, -1)
    out_proj(out)  # computed and thrown away, as theirs
    return out, maps, target


def _kl(p, q):
    return torch.mean(torch.sum(p * (torch.log(p + 1e-4) - torch.log(q + 1e-4)), dim=-1), dim=1)


def _entropy(p):
    return torch.mean(torch.sum(-p * torch.log(p + 1e-4), dim=-1), dim=1)


def authors_level_losses(level, out_projs, tokens, lambda1=0.5, lambda2=0.5):
    """loss1, loss2 of one level computed the authors' way (both branches, aligned reference)."""
    batch, length, _ = tokens.shape
    dist_x, dist_y = squared_distances(*level.grid, tokens.dtype)
    pos = level.pos.unsqueeze(0).repeat(batch, 1, 1)
    x = level.embed(tokens) + pos
    ref = level.ref_embed(level.reference.unsqueeze(0).repeat(batch, 1, 1)) + pos
    maps = {"intra": [], "inter": []}
    for layer, (proj_g, proj_e) in zip(level.layers, out_projs):
        new_x, s_g, t_g = _authors_attention(layer.self_attn, proj_g, x, x, dist_x, dist_y)
        new_ref, s_e, t_e = _authors_attention(layer.cross_attn, proj_e, x, ref, dist_x, dist_y)
        new_x = (x + new_x) - (x + new_ref)
        x = layer.norm1(new_x)
        x = layer.norm2(x + layer.ffn(x))
        maps["intra"].append((s_g, t_g))
        maps["inter"].append((s_e, t_e))
    out = level.head(level.norm(x))
    terms = {}
    for branch, pairs in maps.items():
        to_attn = to_sigma = ent = 0.0
        for s, t in pairs:
            n = t.shape[-1]
            norm_t = (t / torch.unsqueeze(torch.sum(t, dim=-1), dim=-1).repeat(1, 1, 1, n)).detach()
            to_attn += torch.mean(_kl(norm_t, s)) + torch.mean(_kl(s, norm_t))
            norm_t = t / torch.unsqueeze(torch.sum(t, dim=-1), dim=-1).repeat(1, 1, 1, n)
            to_sigma += torch.mean(_kl(norm_t, s.detach())) + torch.mean(_kl(s.detach(), norm_t))
            ent += torch.mean(_entropy(s))
        terms[branch] = (to_attn / len(pairs), to_sigma / len(pairs), ent / len(pairs))
    rec = F.mse_loss(out, tokens) + torch.mean(1 - F.cosine_similarity(out, tokens, dim=-1))
    (g_attn, g_sigma, g_ent), (e_attn, e_sigma, e_ent) = terms["intra"], terms["inter"]
    loss1 = rec + lambda1 * g_sigma - lambda1 * e_sigma
    loss2 = rec - lambda1 * g_attn - lambda2 * g_ent + lambda1 * e_attn + lambda2 * e_ent
    return loss1, loss2


def make_out_projs(levels: nn.ModuleList) -> list[list[tuple[nn.Linear, nn.Linear]]]:
    """The unused attention output projections the authors' model also carries, per level and layer."""
    return [
        [(nn.Linear(lvl.head.in_features, lvl.head.in_features), nn.Linear(lvl.head.in_features, lvl.head.in_features))
         for _ in lvl.layers]
        for lvl in levels
    ]


def authors_step(levels, out_projs, optimizer, features) -> None:
    """Their training step: per level, zero_grad (zeroing, not dropping), two backward passes, one step."""
    for level, projs, level_features in zip(levels, out_projs, features):
        tokens = feature_tokens(level_features, pool=True)
        loss1, loss2 = authors_level_losses(level, projs, tokens)
        optimizer.zero_grad(set_to_none=False)
        loss1.backward(retain_graph=True)
        loss2.backward()
        optimizer.step()


# ---- measurement --------------------------------------------------------------------------------------


def measure(impl: str, shape: str, warmup: int, repeats: int, malloc: str) -> dict:
    """Median seconds per training step and peak RSS of this process (``malloc``: what its malloc does)."""
    levels, features = setup(shape)
    if impl == "ours":
        cfg = resolve({"d_model": [d for _, _, d in SHAPES[shape]]})
        optimizer = level_optimizer(levels, lr=1e-4)  # as fod.method.FOD.fit

        def step():
            training_step(levels, optimizer, features, cfg)
    else:
        projs = make_out_projs(levels)
        extra = [p for per_level in projs for pair in per_level for lin in pair for p in lin.parameters()]
        optimizer = torch.optim.Adam(list(levels.parameters()) + extra, lr=1e-4)

        def step():
            authors_step(levels, projs, optimizer, features)

    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "impl": impl,
        "shape": shape,
        "malloc_state": malloc,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mb": peak_kib / 1024,
    }


def run_worker(impl: str, shape: str, malloc: str, warmup: int, repeats: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, shape, "--warmup", str(warmup), "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, MALLOC_VARIABLE: malloc}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "malloc": malloc}


def markdown(report: dict) -> str:
    lines = [
        "# FOD training step: ours vs the authors' computation",
        "",
        f"torch {report['torch']}, {report['threads']} threads, {report['warmup']} warm-up + {report['repeats']} "
        "timed steps per cell, batch 1, backbone excluded.",
        "",
        "| shape | malloc | implementation | median s/step | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['shape']} | {r['malloc']} | {r['impl']} | {r['median_s']:.3f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "| shape | malloc | time ours / authors | RSS ours / authors |", "|---|---|---|---|"]
    for ratio in report["ratios"]:
        lines.append(f"| {ratio['shape']} | {ratio['malloc']} | {ratio['time']:.3f} | {ratio['rss']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/benchmarks/fod_step.json")
    parser.add_argument("--quick", action="store_true",
                        help="1 warm-up + 1 timed step per cell, the default shape only unless --shapes (smoke test)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES), help="default: all")
    parser.add_argument("--malloc", nargs="+", default=["retain", "system"], choices=["retain", "system"],
                        help="glibc malloc settings to measure under (adbench.methods.malloc; default: both)")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    flush_denormals()  # as the workflow's jobs (adbench.jobs.job_settings), for both implementations
    malloc = retain_freed_memory()  # the setting this cell's ADBENCH_MALLOC asks for
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.warmup, args.repeats = 1, 1
    args.shapes = args.shapes or (["default"] if args.quick else list(SHAPES))
    if args.worker:
        print(json.dumps(measure(*args.worker, args.warmup, args.repeats, malloc)))
        return
    cells = [(shape, malloc) for shape in args.shapes for malloc in args.malloc]
    results = [
        run_worker(impl, shape, malloc, args.warmup, args.repeats, args.threads)
        for shape, malloc in cells
        for impl in ("ours", "authors")
    ]
    by = {(r["shape"], r["malloc"], r["impl"]): r for r in results}
    report = {
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "machine": platform.platform(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "backbone": "excluded from both implementations",
        "results": results,
        "ratios": [
            {
                "shape": shape,
                "malloc": malloc,
                "time": by[shape, malloc, "ours"]["median_s"] / by[shape, malloc, "authors"]["median_s"],
                "rss": by[shape, malloc, "ours"]["peak_rss_mb"] / by[shape, malloc, "authors"]["peak_rss_mb"],
            }
            for shape, malloc in cells
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
