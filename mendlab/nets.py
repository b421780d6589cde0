"""MEND's editor networks (paper §3.1–3.2, Table 6), with every Table-6 ablation as a config value.

For each edited weight of shape key (m, n) = (in, out), the token rows u [rows, m] and δ [rows, n] are
normalised per dimension, transformed by a low-rank residual MLP into pseudo-activations ũ and pseudo-deltas
δ̃, and the weight update is α_ℓ Σ_t δ̃_t ũ_tᵀ. One transform serves every weight of a shape, with a per-layer
scale and offset ("mode").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

VARIANTS: dict[str, dict] = {
    "mend": {},
    "no_share": {"shared": False},
    "no_norm": {"norm": False},
    "no_id_init": {"init": "xavier"},
    "only_u": {"sides": "u"},
    "only_delta": {"sides": "delta"},
    "only_smaller": {"sides": "smaller"},
}


@dataclass(frozen=True)
class NetConfig:
    """Editor network hyperparameters (official defaults, ``config/alg/mend.yaml``).

    ``sides``: ``"both"`` (u and δ concatenated through one MLP, the paper's MEND), ``"u"``, ``"delta"`` or
    ``"smaller"`` (one-sided ablations; the other side passes through normalised). ``init``: ``"id"``
    (U = 0, residual) or ``"xavier"`` (no residual). ``rank`` caps the low-rank width at min(rank, D).
    """

    rank: int = 1920
    n_blocks: int = 2
    shared: bool = True
    norm: bool = True
    init: str = "id"
    sides: str = "both"
    edit_lr: float = 1e-4

    def __post_init__(self):
        if self.rank < 1 or self.n_blocks < 1:
            raise ValueError(f"rank and n_blocks must be >= 1, got rank={self.rank}, n_blocks={self.n_blocks}")
        if self.init not in ("id", "xavier"):
            raise ValueError(f"init must be 'id' or 'xavier', got {self.init!r}")
        if self.sides not in ("both", "u", "delta", "smaller"):
            raise ValueError(f"sides must be one of both/u/delta/smaller, got {self.sides!r}")

    @classmethod
    def variant(cls, name: str, **overrides) -> NetConfig:
        """The config of a Table-6 variant (``"mend"``, ``"no_share"``, ``"no_norm"``, ...)."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
        return replace(cls(**overrides), **VARIANTS[name])


class Normalizer(nn.Module):
    """Per-dimension running mean and unbiased std over every token row seen in training mode.

    The official code runs Welford's update one row at a time; this folds a whole batch in at once with Chan's
    parallel formula (same statistics). The count is a buffer, so a saved editor keeps its initialised state
    and resumed training continues the statistics (the official ``norm_init`` flag is lost on reload).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold rows ``x`` [rows, dim] into the statistics."""
        x = x.detach().double()
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        total = self.count + n
        d = mean_b - self.mean
        self.mean += d * n / total
        self.m2 += m2_b + d ** 2 * self.count * n / total
        self.count.fill_(total)

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / (self.count - 1)).sqrt()

    def _stats(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std + 1e-7) in ``dtype``; cached while the buffers are unchanged (an edit in eval mode then
        costs two elementwise ops here instead of a dozen)."""
        key = (dtype, self.mean.device, self.mean._version, self.m2._version, self.count._version,
               self.mean.data_ptr())
        if getattr(self, "_cache_key", None) != key:
            if self.count < 2:
                raise RuntimeError("the editor's normaliser has seen fewer than 2 token rows: train the editor "
                                   "first (or build it with norm=False)")
            self._cache = (self.mean.to(dtype), self.std.to(dtype) + 1e-7)
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised rows (x − mean) / (std + 1e-7); updates the statistics first in training mode."""
        if self.training:
            self.update(x)
        mean, denom = self._stats(x.dtype)
        return (x - mean) / denom


class LRLinear(nn.Module):
    """One low-rank block z ↦ z + act(s_ℓ ⊙ (U V z + b) + o_ℓ) (identity init) or act(...) (Xavier init).

    z: [rows, D]; U: [D, r], V: [r, D], r = min(rank, D); s, o: [n_modes, D] tables (absent without sharing).
    """

    def __init__(self, dim: int, rank: int, n_modes: int | None, init: str):
        super().__init__()
        r = min(rank, dim)
        self.u = nn.Parameter(torch.empty(dim, r))
        self.v = nn.Parameter(torch.empty(r, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.residual = init == "id"
        if self.residual:
            nn.init.zeros_(self.u)
            nn.init.normal_(self.v)
        else:
            nn.init.xavier_uniform_(self.u, gain=nn.init.calculate_gain("relu"))
            nn.init.xavier_uniform_(self.v)
        self.scale = self.shift = None
        if n_modes is not None:
            self.scale = nn.Embedding(n_modes, dim)
            self.shift = nn.Embedding(n_modes, dim)
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.shift.weight)

    def _dense(self) -> torch.Tensor:
        """Vᵀ Uᵀ [D, D], cached until the parameters change (their in-place version counters move)."""
        key = (self.u._version, self.v._version, self.u.data_ptr(), self.v.data_ptr())
        if getattr(self, "_dense_key", None) != key:
            self._dense_cache = (self.v.T @ self.u.T).detach()
            self._dense_key = key
        return self._dense_cache

    def forward(self, z: torch.Tensor, mode: int | torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled() and 2 * self.v.shape[0] > self.v.shape[1]:
            # Editing without training: when r > D/2 one D×D product per row is cheaper than the two factors.
            a = z @ self._dense() + self.bias
        else:
            a = (z @ self.v.T) @ self.u.T + self.bias
        if self.scale is not None:
            if isinstance(mode, torch.Tensor) and not torch.is_grad_enabled():
                # the same gather as indexing, ~10x cheaper on CPU; training keeps indexing, whose backward
                # sums the scale's gradient in its own order (a different order moves the chaotic training)
                a = a * self.scale.weight.index_select(0, mode) + self.shift.weight.index_select(0, mode)
            else:
                a = a * self.scale.weight[mode] + self.shift.weight[mode]
        # clamp, not relu: at identity init every pre-activation is exactly 0, where relu's gradient is 0 and
        # U would never learn; clamp's backward passes the gradient at the boundary.
        h = a.clamp(min=0)
        return z + h if self.residual else h


class IDMLP(nn.Module):
    """``n_blocks`` :class:`LRLinear` blocks of width D (no expansion)."""

    def __init__(self, dim: int, config: NetConfig, n_modes: int | None):
        super().__init__()
        self.blocks = nn.ModuleList(LRLinear(dim, config.rank, n_modes, config.init) for _ in range(config.n_blocks))

    def forward(self, z: torch.Tensor, mode: int | torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            z = block(z, mode)
        return z


class GradientTransform(nn.Module):
    """(u [rows, m], δ [rows, n]) ↦ (ũ, δ̃) for one weight shape, per ``config.sides``."""

    def __init__(self, m: int, n: int, config: NetConfig, n_modes: int | None):
        super().__init__()
        self.m, self.n, self.norm = m, n, config.norm
        self.u_norm, self.d_norm = Normalizer(m), Normalizer(n)
        sides = config.sides
        if sides == "smaller":
            sides = "delta" if m > n else "u"
        self.sides = sides
        dim = {"both": m + n, "u": m, "delta": n}[sides]
        self.mlp = IDMLP(dim, config, n_modes)

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm:
            u, delta = self.u_norm(u), self.d_norm(delta)
        if self.sides == "both":
            u_t, d_t = self.mlp(torch.cat([u, delta], -1), mode).split([self.m, self.n], -1)
            return u_t, d_t
        if self.sides == "u":
            return self.mlp(u, mode), delta
        return u, self.mlp(delta, mode)


def shape_name(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


class EditorNet(nn.Module):
    """All transforms of one editor plus the learned per-matrix step sizes α (``edit_lrs``).

    ``shapes`` maps each edited weight name to its (in, out) key, in the order that fixes mode ids.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], config: NetConfig):
        super().__init__()
        self.config, self.names = config, list(shapes)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.transforms = nn.ModuleDict()
        self.route: dict[str, tuple[str, int | None]] = {}
        if config.shared:
            groups: dict[tuple[int, int], list[str]] = {}
            for name, shape in self.shapes.items():
                groups.setdefault(shape, []).append(name)
            for shape, members in groups.items():
                self.transforms[shape_name(shape)] = GradientTransform(*shape, config, n_modes=len(members))
                for i, name in enumerate(members):
                    self.route[name] = (shape_name(shape), i)
        else:
            for i, (name, shape) in enumerate(self.shapes.items()):
                self.transforms[f"w{i}"] = GradientTransform(*shape, config, n_modes=None)
                self.route[name] = (f"w{i}", None)
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), float(config.edit_lr)))

    def forward(self, name: str, u: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-activations and pseudo-deltas for the rows of weight ``name``, in the editor's own precision
        (float32 unless it was cast), whatever the model's: a bf16 model's rows are computed on in float32."""
        key, mode = self.route[name]
        return self.transforms[key](u.to(self.edit_lrs.dtype), delta.to(self.edit_lrs.dtype), mode)

    def forward_all(self, rows: dict[str, tuple[torch.Tensor, torch.Tensor]]
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The same for every edited weight at once: the rows of all weights sharing a transform go through it
        in one pass, each row with its own layer's scale and offset. (The official code loops over layers and
        folds each layer's rows into the shared normaliser before normalising it; here one batch's rows are
        folded in together. Identical in eval mode.)"""
        out = {}
        for key, members in self._groups().items():
            sizes = [rows[n][0].shape[0] for n in members]
            # with a device map the layers a transform serves may sit on other devices than the editor: their rows
            # come to the editor and the results go back to each layer's device
            home = dict(device=self.edit_lrs.device, dtype=self.edit_lrs.dtype)
            u = torch.cat([rows[n][0].to(**home) for n in members])
            d = torch.cat([rows[n][1].to(**home) for n in members])
            mode = self.route[members[0]][1]
            if mode is not None and len(members) > 1:
                mode = self._modes(key, members, sizes, u.device)
            ut, dt = self.transforms[key](u, d, mode)
            for n, a, b in zip(members, ut.split(sizes), dt.split(sizes), strict=True):
                out[n] = (a.to(rows[n][0].device), b.to(rows[n][1].device))
        return out

    def _groups(self) -> dict[str, list[str]]:
        """Transform key → the weights it serves, in ``names`` order (fixed at construction, built once)."""
        if getattr(self, "_group_cache", None) is None:
            groups: dict[str, list[str]] = {}
            for name in self.names:
                groups.setdefault(self.route[name][0], []).append(name)
            self._group_cache = groups
        return self._group_cache

    def _modes(self, key: str, members: list[str], sizes: list[int], device: torch.device) -> torch.Tensor:
        """Each row's mode id [Σ sizes]; the last tensor per transform is kept (repeated edits of one input
        reuse it)."""
        cache = self.__dict__.setdefault("_mode_cache", {})
        tag = (tuple(sizes), device)
        if key not in cache or cache[key][0] != tag:
            ids = torch.tensor([self.route[n][1] for n in members], dtype=torch.long)
            cache[key] = (tag, ids.repeat_interleave(torch.tensor(sizes)).to(device))
        return cache[key][1]

    def step_size(self, name: str) -> torch.Tensor:
        return self.edit_lrs[self.names.index(name)]

    def param_groups(self, lr: float, lr_lr: float) -> list[dict]:
        """Two groups for one optimiser: the networks at ``lr`` and the step sizes α at ``lr_lr`` (the official
        code steps α with two Adam instances; its successor, and we, use one optimiser with two groups)."""
        nets = [p for n, p in self.named_parameters() if n != "edit_lrs"]
        return [{"params": nets, "lr": lr}, {"params": [self.edit_lrs], "lr": lr_lr}]

    def count_parameters(self) -> int:
        """Trainable parameters without α (the §1.10 convention)."""
        return sum(p.numel() for n, p in self.named_parameters() if n != "edit_lrs")


def parameter_count(shapes: Sequence[tuple[int, int]] | dict, config: NetConfig | None = None) -> int:
    """Editor parameters for weights of these (in, out) shapes, built on the meta device (no memory)."""
    config = config or NetConfig()
    if not isinstance(shapes, dict):
        shapes = {f"w{i}": s for i, s in enumerate(shapes)}
    with torch.device("meta"):
        return EditorNet(shapes, config).count_parameters()

