"""A DropFormer through ``torch.compile`` for inference: the same outputs from fused operations.

Eager, each block of a batch-1 DropFormer runs a dozen small operations more than a vanilla
Transformer's (``topk``, the static band's diagonals, the top-k block, TDM's sorts and gathers),
and at the default model's size (d 128, 150 tokens) they cost more than the dropped tokens save.
Compiled (inductor, weights frozen into the graph, C++ wrapper), a block is a few fused loops
around the matrix products: Drop Attention reads W through one full product, as the vanilla
Transformer does (:meth:`DropAttention.compiled_product`), the top tokens and TDM's ranking
come from comparisons (fused) instead of ``topk`` and sorts (library calls), and no value is
read back to the host.

A graph is specialised to the batch size, the token count and the items' lengths (TDM's kept
counts follow from them), so each new combination compiles again (tens of seconds on a CPU):
this suits fixed windows. The weights are frozen into a graph when it is built; after loading
others, compile again.
"""

from __future__ import annotations

import logging
import types

import torch

from dropformer.model import DropFormer, DropFormerOutput, host_lengths

log = logging.getLogger(__name__)


class CompiledDropFormer:
    """A DropFormer's inference through compiled graphs, called like the model.

    features (B, T, input_dim), lengths (B,) -> :class:`DropFormerOutput`, under inference mode.
    At most ``max_graphs`` shapes (batch size, tokens, lengths) get a graph; others, and a model
    put back in training mode, run eagerly.
    """

    def __init__(
        self,
        model: DropFormer,
        *,
        cpp_wrapper: bool = True,
        freezing: bool = True,
        max_graphs: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.freezing = freezing
        self.max_graphs = max_graphs or int(torch._dynamo.config.recompile_limit)
        self._shapes: set[tuple[object, ...]] = set()
        self._warned = False
        fn = DropFormer.forward_lengths
        # A code object of its own: dynamo keeps graphs, and its limit on recompiles, per code
        # object, so this head's batch sizes neither evict nor count against another model's.
        own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
        self._forward = torch.compile(
            types.MethodType(own, model),
            fullgraph=True,
            dynamic=False,
            options={"cpp_wrapper": cpp_wrapper},
        )

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> DropFormerOutput:
        lens = host_lengths(lengths, features.shape[1])
        shape = (*features.shape, features.dtype, features.device, *lens)
        with torch.inference_mode():
            if self.model.training:
                return self.model.forward_lengths(features, lens)
            if shape not in self._shapes:
                if len(self._shapes) >= self.max_graphs:
                    if not self._warned:
                        log.warning(
                            "%d graphs built: shape %s and later ones run eagerly",
                            self.max_graphs,
                            shape,
                        )
                        self._warned = True
                    return self.model.forward_lengths(features, lens)
                self._shapes.add(shape)
                # This call builds the graph. Inductor reads freezing from its global config
                # (torch.compile's options do not reach it), so it is set around the build only.
                with torch._inductor.config.patch(freezing=self.freezing):
                    built: DropFormerOutput = self._forward(features, lens)
                return built
            out: DropFormerOutput = self._forward(features, lens)
        return out


def compile_for_inference(
    model: DropFormer,
    *,
    cpp_wrapper: bool = True,
    freezing: bool = True,
    max_graphs: int | None = None,
) -> CompiledDropFormer:
    """``model`` (put in eval mode) compiled for inference; the first call of each shape compiles.

    ``cpp_wrapper`` runs each graph's kernels from generated C++ rather than Python (less
    overhead per operation, which is what a small head at batch 1 pays for). ``max_graphs``
    (default: dynamo's recompile limit, 8) bounds the shapes compiled; further ones run eagerly.
    """
    return CompiledDropFormer(
        model, cpp_wrapper=cpp_wrapper, freezing=freezing, max_graphs=max_graphs
    )
