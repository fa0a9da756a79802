"""The engine reports, per window, the last layer's token importance and exactly the
tokens the Token Dropout Module dropped, on real speech, batched with other lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from dropformer.model import lengths_to_valid
from streamer.engine import Engine

DATA = Path(__file__).resolve().parents[1] / "data" / "emodb"


def survivors(engine: Engine, wave: np.ndarray) -> tuple[set[int], np.ndarray]:
    """Tokens left after the last block, by running the model's blocks by hand; and its importance."""
    model = engine.model
    with torch.inference_mode():
        feats, lengths = engine.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        out = model(feats, lengths)
        t = feats.shape[1]
        valid = lengths_to_valid(lengths, t)
        x = model.input_proj(model.input_norm(feats))
        x = (x + model.pos_table[:t]) * valid[..., None]
        positions = torch.arange(t).expand(1, t)
        for block in model.blocks:
            x, valid, positions, _ = block(x, valid, positions)
    return set(positions[valid].tolist()), out.importance[-1][0].numpy()


def test_importance_and_dropped_tokens_match_the_model(tiny_checkpoint: Path) -> None:
    engine = Engine.load(str(tiny_checkpoint), device="cpu")
    short, _ = sf.read(DATA / "03a01Wa.wav", dtype="float32")
    long, _ = sf.read(DATA / "16a02Nb.wav", dtype="float32")
    res = engine.run([short, long])
    assert res.importance is not None and len(res.importance) == 2
    for i, wave in enumerate((short, long)):
        imp = res.importance[i]
        kept, last = survivors(engine, wave)
        tokens = int(res.tokens_in[i])
        assert (
            imp.values.shape == imp.dropped.shape == (tokens,)
        )  # this window's tokens, not the batch's
        assert imp.layer == len(engine.model.blocks)
        assert set(np.flatnonzero(~imp.dropped).tolist()) == kept
        assert int((~imp.dropped).sum()) == int(res.tokens_kept[i])
        # NaN exactly where a token never reached the last layer; those are dropped too
        np.testing.assert_allclose(imp.values, last[:tokens], rtol=1e-5, equal_nan=True)
        assert np.all(imp.dropped[np.isnan(imp.values)])
        assert 0.25 < imp.dropped.mean() < 0.45  # about 34% in all (the paper's figure)
