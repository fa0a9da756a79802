"""A DropFormer through ``torch.compile`` for inference: the same outputs from fused operations.

Eager, each block of a batch-1 DropFormer runs a dozen small operations more than a vanilla
Transformer's (``topk``, the static band's diagonals, the top-k block, TDM's sorts and gathers),
and at the default model's size (d 128, 150 tokens) they cost more than the dropped tokens save.
Compiled (inductor, weights frozen into the graph, C++ wrapper), a block is a few fused loops
around the matrix products: Drop Attention reads W through one full product, as the vanilla
Transformer does (:meth:`DropAttention.compiled_product`), and TDM ranks the tokens by
comparisons instead of sorts; no value is read back to the host.

A graph is specialised to the batch size, the token count and the items' lengths (TDM's kept
counts follow from them), so each new combination compiles again (tens of seconds on a CPU):
this suits fixed windows. The weights are frozen into a graph when it is built; after loading
others, compile again.
"""

from __future__ import annotations

import types

import torch

from dropformer.model import DropFormer, DropFormerOutput


class CompiledDropFormer:
    """A DropFormer's inference through compiled graphs, called like the model.

    features (B, T, input_dim), lengths (B,) -> :class:`DropFormerOutput`, under inference mode.
    """

    def __init__(self, model: DropFormer, *, cpp_wrapper: bool = True) -> None:
        self.model = model.eval()
        fn = DropFormer.forward_lengths
        # A code object of its own: dynamo keeps graphs, and its limit on recompiles, per code
        # object, so this head's batch sizes neither evict nor count against another model's.
        own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
        self._forward = torch.compile(
            types.MethodType(own, model),
            fullgraph=True,
            dynamic=False,
            options={"freezing": True, "cpp_wrapper": cpp_wrapper},
        )

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> DropFormerOutput:
        t = features.shape[1]
        lens = [min(max(int(n), 0), t) for n in lengths.tolist()]
        with torch.inference_mode():
            out: DropFormerOutput = self._forward(features, lens)
        return out


def compile_for_inference(model: DropFormer, *, cpp_wrapper: bool = True) -> CompiledDropFormer:
    """``model`` (put in eval mode) compiled for inference; the first call of each shape compiles.

    ``cpp_wrapper`` runs each graph's kernels from generated C++ rather than Python (less
    overhead per operation, which is what a small head at batch 1 pays for).
    """
    return CompiledDropFormer(model, cpp_wrapper=cpp_wrapper)
