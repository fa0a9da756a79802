"""Token importance per layer for one utterance, and a Figure 6 style picture.

Top: the waveform. Then one row per DropFormer layer: the importance the layer
gave each token (bars, on the original time axis, in seconds); tokens dropped
by an earlier layer's Token Dropout Module are shaded grey and hatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dropformer.checkpoint import Checkpoint


@dataclass
class Explanation:
    """What the model did with one utterance."""

    importance: np.ndarray
    """(L, T) importance per layer and token; NaN where the token was dropped before that layer."""
    frame_rate_hz: float
    probs: np.ndarray
    """(C,) class probabilities."""
    labels: list[str]
    kept_tokens: list[int]
    """Valid tokens entering layer 1, then after each layer (L + 1 values)."""

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.probs))]

    @property
    def times_s(self) -> np.ndarray:
        """Start time of each token in seconds."""
        return np.arange(self.importance.shape[1]) / self.frame_rate_hz


@torch.no_grad()
def explain(ckpt: Checkpoint, waveform: np.ndarray, device: str = "cpu") -> Explanation:
    """Run the checkpoint's front end and model on 16 kHz mono ``waveform``.

    A checkpoint that normalises per stream treats the file as one stream
    that has heard all of it: its features are standardised by the training
    prior blended with their own statistics, as the daemon's would be.
    """
    frontend = ckpt.build_frontend().to(device).eval()
    model = ckpt.model.to(device).eval()
    x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None].to(device)
    feats, lengths = frontend(x, torch.tensor([x.shape[1]], device=device))  # (1, T, D)
    norm = ckpt.new_normalizer()
    if norm is not None:
        raw = feats[0].double().cpu().numpy()
        norm.update(raw)
        feats = torch.from_numpy(norm.normalize(raw))[None].to(device)
    out = model(feats, lengths)
    imp = torch.stack([i[0] for i in out.importance]).float().cpu().numpy()  # (L, T)
    probs = torch.softmax(out.logits[0].float() / ckpt.temperature, -1).cpu().numpy()
    return Explanation(
        imp,
        float(frontend.frame_rate_hz),
        probs,
        list(ckpt.labels),
        out.kept_tokens[0].cpu().tolist(),
    )


def plot_explanation(
    expl: Explanation,
    waveform: np.ndarray,
    out_path: str | Path,
    title: str = "",
    sample_rate_hz: int = 16_000,
) -> Path:
    """Draw the waveform and one importance row per layer into a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, steps = expl.importance.shape
    fig, axes = plt.subplots(
        layers + 1,
        1,
        figsize=(10, 1.5 + 1.2 * layers),
        sharex=True,
        gridspec_kw={"height_ratios": [1.6] + [1.0] * layers},
    )
    t_wave = np.arange(len(waveform)) / sample_rate_hz
    axes[0].plot(t_wave, waveform, lw=0.4, color="#333")
    probs = ", ".join(f"{lab} {p:.2f}" for lab, p in zip(expl.labels, expl.probs, strict=True))
    axes[0].set_title(title or f"predicted {expl.label} ({probs})", fontsize=10)
    axes[0].set_ylabel("waveform", fontsize=8)
    width = 1.0 / expl.frame_rate_hz
    times = expl.times_s
    for layer in range(layers):
        ax = axes[layer + 1]
        imp = expl.importance[layer]
        dropped = np.isnan(imp)
        ax.bar(times[~dropped], imp[~dropped], width=width, align="edge", color="#d95f02", lw=0)
        for start in _runs(dropped):
            ax.axvspan(
                times[start[0]],
                times[start[1] - 1] + width,
                color="#bbb",
                alpha=0.6,
                hatch="///",
                lw=0,
            )
        kept = expl.kept_tokens[layer]
        ax.set_ylabel(f"layer {layer + 1}\n{kept} tok", fontsize=8)
        ax.set_yticks([])
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, max(steps * width, t_wave[-1] if len(t_wave) else 0))
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where ``mask`` is true."""
    out, start = [], None
    for i, v in enumerate(mask.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out
