"""The rank-1 structure of a linear layer's gradient (paper §3.1, appendix D).

For a layer with output ``h = W u`` the loss gradient is ∇W = Σ_t δ_t u_tᵀ, one outer product per token row,
where u_t is the layer's input and δ_t = ∂L/∂h_t. :func:`capture` records both per edited weight:

    with rank1.capture(model, names) as cap:
        loss = losses.nll(kind, model(**inputs).logits, labels)
        rows = cap.rows(loss)          # {name: Rank1(u [rows, in], delta [rows, out])}

Unlike the official code it never calls ``loss.backward()``: δ comes from ``torch.autograd.grad`` with respect
to the edited layers' *outputs*, so autograd goes no deeper than the earliest edited layer and no weight
gradient is ever formed (``benchmarks/edit_latency.py`` measures an edit against a fwd+bwd).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange

from mendlab.families import _owner, edited_weights, is_conv1d, kind_of
from mendlab.losses import forward, nll


@dataclass
class Rank1:
    """Token rows of one edited weight: ``u`` [rows, in] (layer inputs), ``delta`` [rows, out] (∂L/∂output)."""

    u: torch.Tensor
    delta: torch.Tensor
    owner: torch.Tensor | None = None  # [rows]: the batch row (request) each token row came from

    def gradient(self, conv1d: bool = False) -> torch.Tensor:
        """∇W = Σ_t δ_t u_tᵀ in the weight's own layout: [out, in] for ``nn.Linear``, [in, out] for ``Conv1D``."""
        return self.u.T @ self.delta if conv1d else self.delta.T @ self.u


class Capture:
    """Records inputs and outputs of the edited layers during one forward; see :func:`capture`."""

    def __init__(self, names: list[str]):
        self.names = names
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def rows(self, loss: torch.Tensor, *, keep_zero_rows: bool = False,
             create_graph: bool = False) -> dict[str, Rank1]:
        """δ for every edited layer from ``loss``; rows where u or δ is all zero (padding, positions after the
        last label) are dropped, as in the official ``nz_mask``. Returned tensors are detached unless
        ``create_graph``."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"no forward pass went through {missing}; run the model inside the capture")
        outs = [self.outputs[n] for n in self.names]
        grads = torch.autograd.grad(loss, outs, allow_unused=True, create_graph=create_graph)
        result, owners = {}, {}
        for name, g in zip(self.names, grads, strict=True):
            x, out = self.inputs[name], self.outputs[name]
            tag = (x.shape[:-1], x.device)
            if tag not in owners:
                per_row = x[..., 0].numel() // x.shape[0]
                owners[tag] = torch.arange(x.shape[0], device=x.device).repeat_interleave(per_row)
            owner = owners[tag]
            u = rearrange(x, "... i -> (...) i")
            g = torch.zeros_like(out) if g is None else g
            d = rearrange(g, "... o -> (...) o")
            if not create_graph:
                u, d = u.detach(), d.detach()
            if not keep_zero_rows:
                keep = (u.any(-1) & d.any(-1)).nonzero().squeeze(-1)
                if keep.numel() < u.shape[0]:  # index only when a row goes (each index costs an op per tensor)
                    u, d, owner = u.index_select(0, keep), d.index_select(0, keep), owner.index_select(0, keep)
            result[name] = Rank1(u, d, owner)
        return result


@contextmanager
def capture(model: torch.nn.Module, names: Sequence[str] | None = None) -> Iterator[Capture]:
    """Hooks on the modules owning ``names`` (default: the family's edited weights), always removed on exit.

    The forward hook keeps each module's input u and its output; when the output does not require grad
    (nothing below it does), it is made a leaf that does, so δ can be taken at it and autograd stops there.
    """
    names = edited_weights(model, names)
    cap = Capture(names)
    handles = []

    def hook_for(name: str):
        def hook(module, args, output):
            cap.inputs[name] = args[0]
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            cap.outputs[name] = output
            return output
        return hook

    try:
        for name in names:
            handles.append(_owner(model, name).register_forward_hook(hook_for(name)))
        yield cap
    finally:
        for h in handles:
            h.remove()
        cap.inputs.clear()
        cap.outputs.clear()


def gradients(model: torch.nn.Module, enc: dict, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Σ_t δ_t u_tᵀ per edited weight for the mean NLL of ``enc``'s labels, in each weight's layout."""
    kind = kind_of(model)
    names = edited_weights(model, names)
    with capture(model, names) as cap:
        rows = cap.rows(nll(kind, forward(model, enc), enc["labels"]))
    return {n: r.gradient(is_conv1d(model, n)) for n, r in rows.items()}


def autograd_gradients(model: torch.nn.Module, enc: dict, names: Sequence[str] | None = None
                       ) -> dict[str, torch.Tensor]:
    """The same gradients from plain autograd on the weights (the independent reference)."""
    kind = kind_of(model)
    names = edited_weights(model, names)
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        loss = nll(kind, forward(model, enc), enc["labels"])
        grads = torch.autograd.grad(loss, weights)
    finally:
        for w, f in zip(weights, flags, strict=True):
            w.requires_grad_(f)
    return dict(zip(names, grads, strict=True))


def check(model: torch.nn.Module, batch, names: Sequence[str] | None = None) -> dict[str, float]:
    """Relative error ‖Σ δuᵀ − ∇W‖ / ‖∇W‖ per edited weight against autograd, on ``batch``
    (an :class:`~mendlab.data.EditBatch`, whose ``edit_inner`` is used, or one tensor dict).

    Both sides end in the same matmul, so the error is at rounding level at most (often exactly 0); run the
    model in float64 (``model.double()``) for the acceptance check.
    """
    enc = batch.edit_inner if hasattr(batch, "edit_inner") else batch
    ours = gradients(model, enc, names)
    ref = autograd_gradients(model, enc, list(ours))
    return {n: float((ours[n] - ref[n]).norm() / ref[n].norm().clamp(min=1e-30)) for n in ours}


@contextmanager
def per_example(model: torch.nn.Module, updates: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Run a batch where row b sees its own low-rank update ΔW_b = Σ_r delta[b, r] u[b, r]ᵀ.

    ``updates`` maps a weight name to padded factors ``(delta [B, R, out], u [B, R, in])``. A forward hook adds
    x_b u_bᵀ delta_b to each edited layer's output, which equals running row b with W + ΔW_b (for ``nn.Linear``
    and ``Conv1D`` alike) without materialising B weight matrices. Hooks are removed on exit.
    """
    handles = []

    def hook_for(delta: torch.Tensor, u: torch.Tensor):
        def hook(module, args, output):
            x = args[0]
            if x.shape[0] != u.shape[0]:
                raise ValueError(f"batch of {x.shape[0]} rows for {u.shape[0]} per-example edits")
            coeff = torch.einsum("b...i,bri->b...r", x.to(u.dtype), u)
            return output + torch.einsum("b...r,bro->b...o", coeff, delta).to(output.dtype)
        return hook

    try:
        for name, (delta, u) in updates.items():
            handles.append(_owner(model, name).register_forward_hook(hook_for(delta, u)))
        yield
    finally:
        for h in handles:
            h.remove()
