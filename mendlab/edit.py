"""``Edit``: the result of editing, independent of how it was computed (DESIGN "The flow of data").

Per edited weight an edit holds either low-rank factors — ``delta`` [rows, out] (pseudo-deltas already scaled
by the step size α) and ``u`` [rows, in] (pseudo-activations), ΔW = Σ_t delta_t u_tᵀ — or a dense ΔW in the
weight's own layout. Factors keep their autograd graph, so an editor can be trained through an edit.

    with edit.applied(model):             # in place, restored bit for bit on exit (also on exceptions)
        model.generate(...)
    logits = edit.forward(model, enc)     # functional view, the model is never touched
    (edit_a + edit_b).save("both.safetensors")   # batch editing = sum (paper §5.3)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mendlab import rank1
from mendlab.losses import MODEL_KEYS
from mendlab.losses import forward as _forward


@dataclass
class Factors:
    """ΔW = deltaᵀ u ([out, in]); stored transposed ([in, out]) for ``Conv1D`` weights."""

    delta: torch.Tensor
    u: torch.Tensor
    conv1d: bool = False

    def dense(self) -> torch.Tensor:
        return self.u.T @ self.delta if self.conv1d else self.delta.T @ self.u


@dataclass
class Edit:
    """Per-weight updates ``W ← W + ΔW``; ``factors`` and ``dense`` never share a name."""

    factors: dict[str, Factors] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        both = set(self.factors) & set(self.dense)
        if both:
            raise ValueError(f"weights {sorted(both)} have both factors and a dense delta")

    # -- what it changes ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.factors) + list(self.dense)

    def delta(self, name: str) -> torch.Tensor:
        """ΔW for ``name`` in the weight's layout."""
        return self.factors[name].dense() if name in self.factors else self.dense[name]

    def deltas(self) -> dict[str, torch.Tensor]:
        return {n: self.delta(n) for n in self.names}

    def __add__(self, other: Edit) -> Edit:
        """The sum of two edits: factors are concatenated row-wise (rank adds up), dense deltas added."""
        if not isinstance(other, Edit):
            return NotImplemented
        factors, dense = dict(self.factors), dict(self.dense)
        for name, f in other.factors.items():
            if name in factors and factors[name].conv1d == f.conv1d:
                g = factors[name]
                factors[name] = Factors(torch.cat([g.delta, f.delta]), torch.cat([g.u, f.u]), f.conv1d)
            elif name in factors or name in dense:
                dense[name] = self.delta(name) + f.dense()
                factors.pop(name, None)
            else:
                factors[name] = f
        for name, d in other.dense.items():
            dense[name] = (self.delta(name) + d) if name in factors or name in dense else d
            factors.pop(name, None)
        return Edit(factors, dense, {"parts": [self.meta, other.meta]})

    def __radd__(self, other):  # sum([...]) starts from 0
        return self if other == 0 else NotImplemented

    def detach(self) -> Edit:
        return Edit({n: Factors(f.delta.detach(), f.u.detach(), f.conv1d) for n, f in self.factors.items()},
                    {n: d.detach() for n, d in self.dense.items()}, dict(self.meta))

    # -- using it -----------------------------------------------------------------------------------------
    def params(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``{name: W + ΔW}`` for ``torch.func.functional_call`` (keeps the graph to ΔW)."""
        weights = dict(model.named_parameters())
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise KeyError(f"the model has no parameters {missing}; was this edit made for another model?")
        return {n: weights[n] + self.delta(n).to(weights[n].dtype) for n in self.names}

    def forward(self, model: torch.nn.Module, enc: dict) -> torch.Tensor:
        """Logits of the edited model on ``enc`` without modifying ``model``."""
        return _forward(model, enc, self.params(model))

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Add ΔW to the weights in place; on exit (normal or exception) copy the saved originals back, so every
        weight is restored bit for bit. Only the edited weights are saved, never the whole model."""
        weights = dict(model.named_parameters())
        saved = {}
        try:
            with torch.no_grad():
                for name in self.names:
                    w = weights[name]
                    saved[name] = w.detach().clone()
                    w.add_(self.delta(name).detach().to(w.dtype))
            yield model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    weights[name].copy_(original)

    # -- inspecting it -------------------------------------------------------------------------------------
    def summary(self, model: torch.nn.Module | None = None):
        """A pandas table per weight: rank, ‖ΔW‖_F and, given the model, ‖ΔW‖_F / ‖W‖_F."""
        import pandas as pd

        weights = dict(model.named_parameters()) if model is not None else {}
        rows = []
        for name in self.names:
            d = self.delta(name).detach().float()
            row = {"weight": name, "shape": tuple(d.shape), "rows": (self.factors[name].u.shape[0]
                                                                     if name in self.factors else None),
                   "rank": int(torch.linalg.matrix_rank(d)), "norm": float(d.norm())}
            if name in weights:
                row["relative_norm"] = float(d.norm() / weights[name].detach().float().norm())
            rows.append(row)
        return pd.DataFrame(rows).set_index("weight")

    # -- saving it -----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensors ``{name}.delta``/``{name}.u`` or ``{name}.dense``, layouts in metadata."""
        from safetensors.torch import save_file

        tensors = {}
        for name, f in self.factors.items():
            tensors[f"{name}.delta"] = f.delta.detach().contiguous().cpu()
            tensors[f"{name}.u"] = f.u.detach().contiguous().cpu()
        for name, d in self.dense.items():
            tensors[f"{name}.dense"] = d.detach().contiguous().cpu()
        layout = {"factors": {n: f.conv1d for n, f in self.factors.items()}, "dense": list(self.dense)}
        meta = {"mendlab_edit": json.dumps(layout), "meta": json.dumps(self.meta, default=str)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, device=None) -> Edit:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device or "cpu")) as f:
            meta = f.metadata() or {}
            if "mendlab_edit" not in meta:
                raise ValueError(f"{path} is not a mendlab Edit file (no 'mendlab_edit' metadata)")
            layout = json.loads(meta["mendlab_edit"])
            factors = {n: Factors(f.get_tensor(f"{n}.delta"), f.get_tensor(f"{n}.u"), conv1d)
                       for n, conv1d in layout["factors"].items()}
            dense = {n: f.get_tensor(f"{n}.dense") for n in layout["dense"]}
        return cls(factors, dense, json.loads(meta.get("meta", "{}")))


@dataclass
class EditSet:
    """B independent edits of the same weights, one per request of a batch (what editor training needs).

    ``factors[name]`` holds the rows of all B edits (``delta`` [N, out] scaled by α, ``u`` [N, in]) and
    ``owner`` [N] the request each row belongs to. ``forward(model, enc)`` runs row b of ``enc`` through the model
    edited by edit b only, in one batched pass (:func:`mendlab.rank1.per_example`). ``shared`` holds dense
    deltas (weight layout) that belong to every one of the B edits (ENN: its trained change of the base weights).
    """

    factors: dict[str, Factors]
    owner: dict[str, torch.Tensor]
    size: int
    meta: dict = field(default_factory=dict)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    def _with_shared(self, edit: Edit) -> Edit:
        return edit + Edit(dense=dict(self.shared)) if self.shared else edit

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, b: int) -> Edit:
        out = {}
        for n, f in self.factors.items():
            keep = self.owner[n] == b
            out[n] = Factors(f.delta[keep], f.u[keep], f.conv1d)
        edit = self._with_shared(Edit(out, meta=dict(self.meta, index=b)))
        edit.meta = dict(self.meta, index=b)
        return edit

    def detach(self) -> EditSet:
        return EditSet({n: Factors(f.delta.detach(), f.u.detach(), f.conv1d) for n, f in self.factors.items()},
                       self.owner, self.size, dict(self.meta), {n: d.detach() for n, d in self.shared.items()})

    def merged(self) -> Edit:
        """All B edits summed into one (batch editing); a shared part counts once."""
        edit = self._with_shared(Edit(dict(self.factors), meta=dict(self.meta)))
        edit.meta = dict(self.meta)
        return edit

    def padded(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per weight ``(delta [B, R, out], u [B, R, in])``, zero-padded to the longest edit's R rows."""
        out = {}
        for n, f in self.factors.items():
            owner = self.owner[n]
            counts = torch.bincount(owner, minlength=self.size)
            starts = torch.cumsum(counts, 0) - counts
            pos = torch.arange(owner.numel(), device=owner.device) - starts[owner]
            r = int(counts.max()) if owner.numel() else 0
            d = f.delta.new_zeros(self.size, r, f.delta.shape[-1]).index_put((owner, pos), f.delta)
            u = f.u.new_zeros(self.size, r, f.u.shape[-1]).index_put((owner, pos), f.u)
            out[n] = (d, u)
        return out

    def forward(self, model: torch.nn.Module, enc: dict, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits where row b is computed with edit b applied, or with edit ``index[b]`` when given
        (e.g. several rephrases per request). The model is not modified."""
        updates = self.padded()
        if index is not None:
            updates = {n: (d[index], u[index]) for n, (d, u) in updates.items()}
        params = Edit(dense=dict(self.shared)).params(model) if self.shared else None
        with rank1.per_example(model, updates):
            return _forward(model, enc, params)

    def forward_many(self, model: torch.nn.Module, encs: list[dict]) -> list[torch.Tensor]:
        """``[self.forward(model, e) for e in encs]`` in one batched pass: each input's B rows are padded on
        the right to common widths (ids and masks 0, so padding is masked out) and stacked, row b of every input
        sees edit b, and each result is cut back to its own rows and width. One pass instead of several saves
        the per-layer overhead that dominates a small model's forward."""
        keys = [k for k in MODEL_KEYS if k in encs[0]]
        if any(int(e["input_ids"].shape[0]) != self.size for e in encs):
            raise ValueError(f"every input needs {self.size} rows, one per edit; got "
                             f"{[int(e['input_ids'].shape[0]) for e in encs]}")
        stacked = {}
        for k in keys:
            width = max(e[k].shape[1] for e in encs)
            stacked[k] = torch.cat([F.pad(e[k], (0, width - e[k].shape[1])) for e in encs])
        index = torch.arange(self.size, device=stacked["input_ids"].device).repeat(len(encs))
        logits = self.forward(model, stacked, index)
        out = []
        for i, e in enumerate(encs):
            part = logits[i * self.size:(i + 1) * self.size]
            if part.dim() >= 3:  # [B, T, V]: T follows the decoder input for encoder-decoders
                part = part[:, :e.get("decoder_input_ids", e["input_ids"]).shape[1]]
            out.append(part)
        return out
