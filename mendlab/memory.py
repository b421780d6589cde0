"""Sequential editing by least squares: a memory of every edit's keys and wanted outputs, re-solved at each edit.

Summing edits one after another (plain sequential editing) lets edit t overwrite what edits 0 … t−1 did on their
own inputs. MALMEN (Tan et al., ICLR 2024) aggregates a *batch* by least squares instead (:meth:`EditSet.aggregate`);
:class:`LeastSquaresMemory` carries that over to a *sequence*. Per edited weight it keeps, over all edits so far,

    A = Σ_m k_m k_mᵀ  [in, in]        and        B = Σ_m v_m k_mᵀ  [out, in],

where k_m is a key (the layer input of one token row of an edit request) and v_m the change of that layer's output
the edit asked for: edit t is computed on the model already holding the total T_{t−1}, so on its keys it asks for
v = (T_{t−1} + ΔW_t) k, the old total plus its own change. The new total is the one ΔW that best gives every key
ever seen its wanted output,

    T_t = argmin_X Σ_m ‖X k_m − v_m‖² + λ ‖X‖²_F = B (A + λ I)⁻¹,   λ = ridge · tr(A) / in,

applied in place of T_{t−1} (the same ridge as :meth:`EditSet.aggregate`). Memory is [in, in] + [out, in] per
weight, whatever the number of edits: the keys themselves are never stored.
"""

from __future__ import annotations

import torch

from mendlab.edit import Edit, EditSet


class LeastSquaresMemory:
    """The keys and wanted outputs of all edits so far, per weight; :meth:`add` returns the new total edit."""

    def __init__(self, ridge: float = 1e-2):
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0 (the memory's keys rarely span every input dimension), got {ridge}")
        self.ridge = ridge
        self.gram: dict[str, torch.Tensor] = {}  # A [in, in], float64
        self.cross: dict[str, torch.Tensor] = {}  # B [out, in], float64
        self.conv1d: dict[str, bool] = {}
        self.total = Edit()
        self.n_edits = 0

    def add(self, edits: EditSet) -> Edit:
        """Remember ``edits`` (made on the model holding :attr:`total`, with keys: ``editor.edit_many``) and
        return the new total: dense ΔW per weight, relative to the weights before the first edit."""
        missing = [n for n in edits.factors if n not in edits.keys]
        if missing:
            raise ValueError(f"least-squares memory needs the edits' keys (editor.edit_many); none for {missing}")
        singles = [edits[b] for b in range(len(edits))]  # each request's own ΔW_b
        for name, f in edits.factors.items():
            keys, owner = (t.detach() for t in edits.keys[name])
            for b, single in enumerate(singles):
                self._remember(name, keys[owner == b].double(), single.delta(name).detach().double(), f.conv1d)
        dtype = next(iter(edits.factors.values())).delta.dtype
        self.total = Edit(dense={n: self._solve(n, dtype) for n in self.gram},
                          meta={"aggregate": "least_squares_memory", "ridge": self.ridge})
        self.n_edits += len(edits)
        return self.total

    def _remember(self, name: str, k: torch.Tensor, dw: torch.Tensor, conv1d: bool) -> None:
        """Add keys ``k`` [M, in] whose wanted output change is (T_{t−1} + ``dw``) k (``dw`` in the weight's layout)."""
        dw = dw.T if conv1d else dw  # [out, in]
        self.conv1d[name] = conv1d
        g = k.T @ k
        self.gram[name] = self.gram.get(name, torch.zeros_like(g)) + g
        self.cross[name] = self.cross.get(name, torch.zeros_like(dw)) + (self._current(name, dw) + dw) @ g

    def _current(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """T_{t−1} for ``name`` as [out, in] float64 (zero before its first edit)."""
        if name not in self.total.dense:
            return torch.zeros_like(like)
        d = self.total.dense[name].double()
        return d.T if self.conv1d[name] else d

    def _solve(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        a, b = self.gram[name], self.cross[name]
        n_in = a.shape[0]
        trace = float(a.diagonal().sum())
        lam = self.ridge * trace / n_in if trace > 0 else 1.0
        x = torch.linalg.solve(a + lam * torch.eye(n_in, dtype=a.dtype, device=a.device), b.T)  # [in, out]
        return (x if self.conv1d[name] else x.T).to(dtype)
