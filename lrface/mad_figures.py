"""MAD's figures (seed 003 supplementary §3–6): random samples (Fig. 2), reconstructions before / after
disentanglement (Fig. 3), t-SNE of f_e / f_¬e and f_id / f_¬id (Fig. 4–5) and attribute interpolations (Fig. 6).

Interpolation (Fig. 6): between a source face's factors f_a = E(Q(x_a)) and a target's f_b, ``steps`` codes from
0 % to 100 % are decoded by P(G(f_t)). Row k ∈ {pose, identity, expression, style} moves only factor k; row
"all but k" moves every factor except k; row "all" moves the whole vector — the figure's nine rows. The unit-norm
factors (identity, style, expression) follow the great circle (slerp, so every f_t stays on the sphere E's heads
produce); pose, a raw regression output, moves linearly. Columns: x_a | P(G(f_0)) … P(G(f_1)) | x_b, so the second
and second-to-last pictures are the reconstructions of source and target, as in the supplementary.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lrface.inference import to_model_range
from lrface.io import atomic_write_bytes
from lrface.nets.mad import FACTORS, NORMALISED_FACTORS, Disentangler, MADNet

__all__ = ["INTERPOLATION_ROWS", "interpolation_codes", "interpolation_grid", "slerp", "stack_strips",
           "tsne_figure"]

INTERPOLATION_ROWS = (*FACTORS, *(f"all but {name}" for name in FACTORS), "all")


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit vectors. a, b: d; t: T in [0, 1] → T×d (linear where a ≈ ±b)."""
    a_n, b_n = a / a.norm().clamp_min(1e-12), b / b.norm().clamp_min(1e-12)
    omega = torch.arccos((a_n * b_n).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    if float(omega.sin().abs()) < 1e-4:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / omega.sin()


def _interp_factor(name: str, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = FACTORS[name]
    if name in NORMALISED_FACTORS:
        return slerp(a[s], b[s], t)
    return (1 - t[:, None]) * a[s] + t[:, None] * b[s]


def interpolation_codes(f_a: torch.Tensor, f_b: torch.Tensor, steps: int = 10) -> dict[str, torch.Tensor]:
    """{row: steps×99} for :data:`INTERPOLATION_ROWS`, from f_a (99) to f_b (99), t = 0 … 1 inclusive."""
    if f_a.shape != f_b.shape or f_a.dim() != 1:
        raise ValueError(f"f_a and f_b must be two 99-vectors; got {tuple(f_a.shape)} and {tuple(f_b.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be ≥ 2 (0 % and 100 %); got {steps}")
    t = torch.linspace(0, 1, steps, dtype=f_a.dtype)
    moved = {name: _interp_factor(name, f_a, f_b, t) for name in FACTORS}
    rows: dict[str, torch.Tensor] = {}
    for row in INTERPOLATION_ROWS:
        moving = ({row} if row in FACTORS else set(FACTORS) if row == "all"
                  else set(FACTORS) - {row[len("all but "):]})
        codes = f_a.expand(steps, -1).clone()
        for name in moving:
            codes[:, FACTORS[name]] = moved[name]
        rows[row] = codes
    return rows


@torch.no_grad()
def interpolation_grid(net: MADNet, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """The Fig. 6 block of one face pair: x_a, x_b 3×S×S in [0, 1] → (9·(steps + 2))×3×S×S in [0, 1], row-major
    (rows :data:`INTERPOLATION_ROWS`; columns source | steps decoded codes | target)."""
    device = next(net.parameters()).device
    x = to_model_range(torch.stack([x_a, x_b]).to(device).float())
    f = Disentangler.concat(net.factors(net.encode(x))).float()
    rows = interpolation_codes(f[0].cpu(), f[1].cpu(), steps)
    tiles = []
    for codes in rows.values():
        decoded = ((net.decode(net.reentangle(codes.to(device))) + 1) / 2).clamp(0, 1).cpu()
        tiles += [x_a.cpu(), *decoded, x_b.cpu()]
    return torch.stack(tiles)


def stack_strips(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Stack PNG strips of one width top to bottom (e.g. inputs | reconstruction before | after disentanglement)."""
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    widths = {a.shape[1] for a in arrays}
    if len(widths) != 1:
        raise ValueError(f"strips of different widths {sorted(widths)}: {[str(p) for p in paths]}")
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(arrays, axis=0)).save(buf, format="PNG")
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)


def tsne_figure(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], out: str | Path, columns: int = 2,
                label_names: Mapping[int, str] | None = None) -> Path:
    """Scatter plots of 2-d maps coloured by label (Fig. 4–5): {title: (N×2 points, N int labels)} → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.0 * rows), squeeze=False)
    for ax, (title, (points, labels)) in zip(axes.flat, panels.items()):
        labels = np.asarray(labels)
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for k, c in enumerate(classes):
            m = labels == c
            name = label_names.get(int(c), str(c)) if label_names else str(c)
            ax.scatter(points[m, 0], points[m, 1], s=7, color=cmap(k % cmap.N), label=name if len(classes) <= 10
                       else None)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(classes) <= 10:
            ax.legend(fontsize=6, markerscale=1.5, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)
