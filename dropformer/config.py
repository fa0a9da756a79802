"""DropFormer configuration: one dataclass with documented defaults, and the
paper's model and ablations (Table 1) as named presets.

Where the paper is silent the defaults follow the lab's related public systems
(SpeechFormer++, DWFormer, Key-Sparse Transformer): input LayerNorm, then
sinusoidal positions; post-LN blocks; 8 heads; FFN 512; dropout 0.1; mean
pooling; an MLP head d -> 512 -> 256 -> classes with dropout 0.5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dropformer.configio import dataclass_from_dict
from dropformer.errors import ConfigError

# Figure 3 of the paper: offsets |a - b| that the static mask keeps.
PAPER_STATIC_OFFSETS: tuple[tuple[int, ...] | None, ...] = ((0, 2), (0, 2), (0, 1, 3), (0, 1, 3))


@dataclass
class DropFormerConfig:
    """Hyper-parameters of a DropFormer (defaults: the paper's model on WavLM-Large layer 12)."""

    input_dim: int = 1024
    """Feature size of the front end (WavLM-Large 1024, WavLM-Base 768, log-mel 80)."""
    num_classes: int = 4
    """Number of emotion classes (IEMOCAP 4-class: neutral, happy, angry, sad)."""
    d_model: int = 1024
    """Transformer width. A linear input projection is added when it differs from input_dim."""
    num_layers: int = 4
    """Number of DropFormer blocks (the paper uses 4)."""
    num_heads: int = 8
    """Attention heads; d_model must be divisible by it."""
    ffn_dim: int = 512
    """Hidden size of each block's feed-forward network."""
    dropout: float = 0.1
    """Dropout on residual branches and the FFN (and on attention weights unless attention_dropout is set)."""
    attention_dropout: float | None = None
    """Dropout on the attention weights; None = ``dropout``. On CPUs sampling a (B, H, T, T) mask costs about a
    quarter of a training step, so 0 trains faster."""
    keep_rate: float = 0.1
    """KR: share of valid tokens whose rows and columns the dynamic mask keeps (k = int(KR * length))."""
    drop_rate: float = 0.1
    """DR: share of valid tokens the Token Dropout Module drops after each block."""
    static_offsets: tuple[tuple[int, ...] | None, ...] = PAPER_STATIC_OFFSETS
    """Per layer, the diagonal offsets |a-b| the static mask keeps; None = all ones."""
    use_drop_attention: bool = True
    """False replaces Drop Attention by plain softmax attention (the 'w/o DA' ablation)."""
    use_dynamic_mask: bool = True
    """Include M_d in M = M_d OR M_s."""
    use_static_mask: bool = True
    """Include M_s in M = M_d OR M_s."""
    use_tdm: bool = True
    """Apply the Token Dropout Module after every block."""
    importance_reduction: str = "mean"
    """How heads are combined into one token-importance vector for TDM: 'mean' or 'max'."""
    head_hidden: tuple[int, ...] = (512, 256)
    """Hidden sizes of the classifier MLP after pooling."""
    head_dropout: float = 0.5
    """Dropout inside the classifier MLP."""
    max_positions: int = 8192
    """Longest sequence the sinusoidal position table covers (tokens)."""

    def __post_init__(self) -> None:
        self.static_offsets = tuple(
            None if o is None else tuple(int(v) for v in o) for o in self.static_offsets
        )
        self.head_hidden = tuple(int(h) for h in self.head_hidden)
        checks = [
            (self.input_dim > 0, "input_dim", "must be > 0"),
            (self.num_classes > 1, "num_classes", "must be >= 2"),
            (
                self.d_model > 0 and self.d_model % self.num_heads == 0,
                "d_model",
                f"must be a positive multiple of num_heads ({self.num_heads})",
            ),
            (self.num_layers > 0, "num_layers", "must be >= 1"),
            (0.0 <= self.keep_rate <= 1.0, "keep_rate", "must lie in [0, 1]"),
            (0.0 <= self.drop_rate < 1.0, "drop_rate", "must lie in [0, 1)"),
            (0.0 <= self.dropout < 1.0, "dropout", "must lie in [0, 1)"),
            (
                self.attention_dropout is None or 0.0 <= self.attention_dropout < 1.0,
                "attention_dropout",
                "must lie in [0, 1) or be null",
            ),
            (
                len(self.static_offsets) == self.num_layers,
                "static_offsets",
                f"needs one entry per layer ({self.num_layers})",
            ),
            (
                self.importance_reduction in ("mean", "max"),
                "importance_reduction",
                "must be 'mean' or 'max'",
            ),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ConfigError(f"DropFormerConfig.{name} = {getattr(self, name)!r} {why}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DropFormerConfig:
        return dataclass_from_dict(cls, data, "DropFormerConfig")


# Table 1 of the paper, as overrides of the full model.
PRESETS: dict[str, dict[str, Any]] = {
    "dropformer": {},
    "no_tdm": {"use_tdm": False},
    "static_only": {"use_tdm": False, "use_dynamic_mask": False},
    "dynamic_only": {"use_tdm": False, "use_static_mask": False},
    "no_da": {"use_drop_attention": False},
    "vanilla": {"use_tdm": False, "use_drop_attention": False},
}

PRESET_TITLES: dict[str, str] = {
    "dropformer": "DropFormer",
    "no_tdm": "DropFormer w/o TDM",
    "static_only": "DropFormer w/o TDM & M_d",
    "dynamic_only": "DropFormer w/o TDM & M_s",
    "no_da": "DropFormer w/o DA",
    "vanilla": "Vanilla Transformer",
}


def preset(name: str, **overrides: Any) -> DropFormerConfig:
    """Build the config of a named preset; keyword arguments override any field."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return DropFormerConfig(**{**PRESETS[name], **overrides})
