"""Checkers for the course's exercises (``notebooks/00`` … ``08``), one per exercise.

The convention, which ``mendlab course student-copy`` relies on:

- An exercise's solution is the part of a code cell between the lines ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` (nbgrader's markers, each on its own line, indented like the code they hold). A function
  exercise keeps its signature and docstring outside the markers; an answer exercise marks ``answer = ...``.
  The student copy replaces every marked region with ``raise NotImplementedError("exercise: ...")``.
- The check is the next code cell after the solution cell. Its first line is ``# CHECK`` and it calls one
  checker of this module with the student's function or answer.
- A solution cell and its check run in a fresh namespace where only the notebook's first code cell has run, so
  every checker builds or loads what it compares against itself: seeded random inputs for the library's own
  function, or a committed results table.
- A checker prints one line starting with ``✓`` (rounded figures only, the same on every run) when the work is
  right. Otherwise it raises ``AssertionError`` saying what differs (shape, largest error, which input), or
  ``not implemented yet: ...`` while the student's function still raises ``NotImplementedError``.
"""

from __future__ import annotations

import random

import torch

from mendlab import losses

ALGS = ("ft", "ft_kl", "ke", "enn", "mend")


def _call(fn, *args, what: str, **kwargs):
    """``fn(*args, **kwargs)``; a ``NotImplementedError`` becomes ``AssertionError("not implemented yet: ...")``."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise AssertionError(f"not implemented yet: {what}") from err


def _close(mine, ref: torch.Tensor, what: str, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Raise ``AssertionError`` naming ``what`` unless ``mine`` is a tensor of ``ref``'s shape and values."""
    if not isinstance(mine, torch.Tensor):
        mine = torch.as_tensor(mine) if isinstance(mine, (int, float, bool)) else mine
    if not isinstance(mine, torch.Tensor):
        raise AssertionError(f"{what}: expected a tensor, got {type(mine).__name__}")
    if tuple(mine.shape) != tuple(ref.shape):
        raise AssertionError(f"{what}: shape {tuple(mine.shape)}, expected {tuple(ref.shape)}")
    if ref.dtype == torch.bool:
        if mine.dtype != torch.bool:
            raise AssertionError(f"{what}: expected a bool tensor, got {mine.dtype}")
        wrong = (mine != ref).nonzero().flatten().tolist()
        if wrong:
            raise AssertionError(f"{what}: wrong at rows {wrong} (yours {mine[wrong].tolist()}, "
                                 f"expected {ref[wrong].tolist()})")
        return
    a, b = mine.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{what}: max abs error {float((a - b).abs().max()):.3g} "
                             f"(tolerance {atol:g} + {rtol:g}·|expected|)")


def _ok(message: str) -> None:
    print("✓", message)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _masked_labels(logits: torch.Tensor, g: torch.Generator, flip: float, drop: float) -> torch.Tensor:
    """Labels [B, T]: the argmax, a share ``flip`` changed, a share ``drop`` set to −100 (the first position of
    every row stays labelled)."""
    labels = logits.argmax(-1)
    flips = torch.rand(labels.shape, generator=g) < flip
    labels[flips] = (labels[flips] + 1) % logits.shape[-1]
    drops = torch.rand(labels.shape, generator=g) < drop
    drops[:, 0] = False
    labels[drops] = -100
    return labels


# -- 00 · the editing problem ------------------------------------------------------------------------------
def check_edit_success(fn) -> None:
    """``fn(logits [B, T, V], labels [B, T])`` → bool [B], against ``losses.correct`` (aligned, −100 unscored)."""
    g, rows, hits = _gen(0), 0, 0
    for b, t, v in ((4, 5, 7), (6, 3, 11), (8, 6, 5)):
        logits = torch.randn(b, t, v, generator=g)
        labels = _masked_labels(logits, g, flip=0.12, drop=0.3)
        ref = losses.correct("seq2seq", logits, labels)
        mine = _call(fn, logits, labels, what="edit success (a bool per example)")
        _close(mine, ref, f"edit success on logits {tuple(logits.shape)}")
        rows, hits = rows + b, hits + int(ref.sum())
    _ok(f"edit success matches losses.correct on 3 random batches ({hits} of {rows} examples succeed)")


def check_accuracy_drawdown(fn) -> None:
    """``fn(pre_logits, post_logits, labels)`` → accuracy before − accuracy after (a float)."""
    g = _gen(1)
    for b, t, v in ((40, 3, 9), (25, 4, 6)):
        pre = torch.randn(b, t, v, generator=g)
        labels = _masked_labels(pre, g, flip=0.03, drop=0.2)
        post = pre + 0.3 * torch.randn(b, t, v, generator=g)
        fixed = torch.rand(b, generator=g) < 0.3  # facts the edited model gets right and the unedited one not
        labels = torch.where(fixed[:, None] & (labels != -100), post.argmax(-1), labels)
        before = losses.correct("seq2seq", pre, labels).float()
        after = losses.correct("seq2seq", post, labels).float()
        ref = before.mean() - after.mean()
        mine = _call(fn, pre, post, labels, what="accuracy drawdown")
        _close(torch.as_tensor(float(mine)), ref.double(), f"drawdown on a panel of {b} facts", atol=1e-6)
    flipped = float((before != after).float().mean())
    _ok(f"drawdown matches on 2 panels (last: {float(ref):.3f}, while {flipped:.0%} of its facts flipped "
        "between right and wrong)")


# -- 01 · rank-1 gradients -----------------------------------------------------------------------------------
def check_rank1_gradient(fn) -> None:
    """``fn(u [T, m], delta [T, n], conv1d=False)`` → ∇W: [n, m] (``nn.Linear``) or [m, n] (``Conv1D``)."""
    from transformers.pytorch_utils import Conv1D

    g = _gen(2)
    for m, n, rows in ((6, 4, 5), (16, 24, 9)):
        for conv1d in (False, True):
            layer = (Conv1D(n, m) if conv1d else torch.nn.Linear(m, n)).double()
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64))
            u = torch.randn(2, rows, m, generator=g, dtype=torch.float64)
            out = layer(u)
            loss = (out.tanh() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()
            delta, grad = torch.autograd.grad(loss, [out, layer.weight])
            mine = _call(fn, u.reshape(-1, m), delta.reshape(-1, n), conv1d=conv1d, what="∇W from u and δ")
            layout = "Conv1D [in, out]" if conv1d else "Linear [out, in]"
            _close(mine, grad, f"{layout} weight, {2 * rows} token rows, m={m}, n={n}", atol=1e-10, rtol=1e-10)
    _ok("Σ_t δ_t u_tᵀ equals autograd's weight gradient for Linear and Conv1D layers (2 shapes each)")


def check_break_even_rows(fn) -> None:
    """``fn(m, n)`` → the most token rows whose pairs (rows·(m+n) numbers) cost no more than ∇W (m·n)."""
    shapes = ((128, 512), (768, 3072), (4096, 16384), (3, 5), (7, 7), (1, 1), (10, 15))
    for m, n in shapes:
        ref = m * n // (m + n)
        assert ref * (m + n) <= m * n < (ref + 1) * (m + n)
        mine = _call(fn, m, n, what="break-even rows")
        if mine != ref:
            raise AssertionError(f"m={m}, n={n}: yours {mine}, expected {ref} ({ref} rows cost {ref * (m + n):,} "
                                 f"numbers, {ref + 1} rows {(ref + 1) * (m + n):,}, ∇W {m * n:,})")
    _ok("break-even rows right on 7 shapes: " + ", ".join(f"{m}↔{n}: {m * n // (m + n)}" for m, n in shapes[:3]))


# -- 02 · the editor network ---------------------------------------------------------------------------------
def check_lowrank_block(fn) -> None:
    """``fn(z [rows, D], u [D, r], v [r, D], bias [D], scale [D], shift [D])`` → one identity-init block."""
    from mendlab.nets import LRLinear

    g = _gen(3)
    for dim, rank, mode in ((10, 4, 1), (6, 8, 2)):
        block = LRLinear(dim, rank, n_modes=3, init="id")
        for p in block.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g))
        z = torch.randn(5, dim, generator=g)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                ref = block(z, mode)
            mine = _call(fn, z, block.u.detach(), block.v.detach(), block.bias.detach(),
                         block.scale.weight[mode].detach(), block.shift.weight[mode].detach(), what="low-rank block")
            _close(mine, ref, f"block D={dim}, rank {rank}, layer (mode) {mode}", atol=1e-5)
        zero = _call(fn, z, torch.zeros_like(block.u), block.v.detach(), torch.zeros(dim), torch.ones(dim),
                     torch.zeros(dim), what="low-rank block")
        _close(zero, z, f"block D={dim} at identity init (U = 0, b = 0, scale 1, shift 0): should return z")
    _ok("the block matches nets.LRLinear on 2 shapes and is the identity at initialisation")


def check_editor_parameters(fn) -> None:
    """``fn(m, n, n_layers, rank=1920, n_blocks=2)`` → parameters of the network one shape's layers share."""
    from mendlab.nets import NetConfig, parameter_count

    cases = ((128, 512, 3, 1920, 2), (4096, 16384, 3, 1920, 2), (64, 32, 2, 16, 1), (768, 3072, 6, 512, 3))
    for m, n, layers, rank, blocks in cases:
        ref = parameter_count([(m, n)] * layers, NetConfig(rank=rank, n_blocks=blocks))
        mine = _call(fn, m, n, layers, rank=rank, n_blocks=blocks, what="editor parameter count")
        if mine != ref:
            raise AssertionError(f"m={m}, n={n}, {layers} layers, rank {rank}, {blocks} blocks: yours {mine:,}, "
                                 f"nets.parameter_count says {ref:,}")
    _ok(f"parameter counts match nets.parameter_count on 4 shapes (GPT-J's three 4096→16384 weights share "
        f"{parameter_count([(4096, 16384)] * 3):,})")


# -- 03 · training and editing -------------------------------------------------------------------------------
def _loc_batch(g: torch.Generator, b: int, t: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, post, mask): float64 logits [B, T, V] and a 0/1 mask [B, T] with at least one kept position."""
    pre = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    post = pre + torch.randn(b, t, v, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=g) < 0.7).long()
    mask[:, 0] = 1
    return pre, post, mask


def _kl_ref(pre, post, mask) -> torch.Tensor:
    return losses.kl_loc("seq2seq", pre, post, {"attention_mask": torch.ones_like(mask),
                                                 "decoder_attention_mask": mask})


def _close_hinted(mine, ref: torch.Tensor, what: str, wrong: torch.Tensor, hint: str) -> None:
    """:func:`_close` (to 1e-8), with ``hint`` added to the message when ``mine`` equals ``wrong``, the value a
    known mistake gives."""
    extra = hint if isinstance(mine, torch.Tensor) and torch.allclose(mine.double(), wrong) else ""
    try:
        _close(mine, ref, what, atol=1e-8)
    except AssertionError as err:
        raise AssertionError(str(err) + extra) from None


def check_kl_loc(fn) -> None:
    """``fn(pre [B, T, V], post [B, T, V], mask [B, T])`` → mean KL(pre ‖ post) over the kept positions."""
    g = _gen(4)
    for b, t, v in ((3, 5, 7), (2, 4, 13)):
        pre, post, mask = _loc_batch(g, b, t, v)
        mine = _call(fn, pre, post, mask, what="locality KL")
        ref = _kl_ref(pre, post, mask)
        what = f"KL on logits {(b, t, v)}, {int(mask.sum())} kept positions"
        _close_hinted(mine, ref, what, _kl_ref(post, pre, mask),
                      " (that is KL(post ‖ pre): the expectation is under the unedited model's distribution)")
    _ok(f"the locality KL matches losses.kl_loc on 2 random batches (last: {float(ref):.3f})")


def _edit_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [4, 6, 9] and labels with different numbers of labelled tokens per row (float64)."""
    logits = torch.randn(4, 6, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (4, 6), generator=g)
    for row, count in enumerate((1, 2, 4, 6)):
        labels[row, count:] = -100
    return logits, labels


def check_mend_loss(fn) -> None:
    """``fn(post_logits, labels, pre_loc, post_loc, loc_mask, c_edit, c_loc)`` → Algorithm 1's loss."""
    g = _gen(5)
    logits, labels = _edit_batch(g)
    pre, post, mask = _loc_batch(g, 3, 5, 9)
    for c_edit, c_loc in ((0.1, 1.0), (0.2, 0.5)):
        l_edit = losses.nll_per_example("seq2seq", logits, labels).mean()
        ref = c_edit * l_edit + c_loc * _kl_ref(pre, post, mask)
        mine = _call(fn, logits, labels, pre, post, mask, c_edit, c_loc, what="MEND's training loss")
        token_mean = c_edit * losses.nll("seq2seq", logits, labels) + c_loc * _kl_ref(pre, post, mask)
        _close_hinted(mine, ref, f"loss with c_edit={c_edit}, c_loc={c_loc}", token_mean,
                      " (you averaged the NLL over all tokens: average it per request first, then over requests)")
    _ok(f"c_edit·L_e + c_loc·L_loc matches train.edit_step's formula (last: {float(ref):.3f})")


# -- 04 · MEND against the baselines -------------------------------------------------------------------------
def check_ft_kl_loss(fn) -> None:
    """``fn(edit_logits, edit_labels, pre_loc, post_loc, loc_mask, c_edit)`` → FT+KL's loss L_loc + c_edit·L_e."""
    g = _gen(6)
    logits, labels = _edit_batch(g)
    pre, post, mask = _loc_batch(g, 2, 6, 9)
    for c_edit in (0.5, 1e-2):
        ref = _kl_ref(pre, post, mask) + c_edit * losses.nll("seq2seq", logits, labels)
        mine = _call(fn, logits, labels, pre, post, mask, c_edit, what="FT+KL's loss")
        _close(mine, ref, f"FT+KL loss with c_edit={c_edit}", atol=1e-8)
    share = float(_kl_ref(pre, post, mask) / ref)
    _ok(f"L_loc + c_edit·L_e matches editors.ft (at c_edit=0.01 the KL is {share:.0%} of this loss)")


def _compare_gen():
    """Mean generation drawdown per editor, on the seeds where all five editors have a row (as notebook 04)."""
    from mendlab.experiments import report

    frame, _ = report.load("compare_ci_gen")
    frame = frame[frame["task"] == "gen"]
    frame = frame[frame.groupby("seed")["alg"].transform("nunique") == len(ALGS)]
    return frame.groupby("alg")["drawdown"].mean()


def check_lowest_gen_drawdown(answer) -> None:
    """``answer``: the editor with the lowest mean drawdown on generation in ``results/compare_ci_gen.csv``."""
    gen = _compare_gen()
    if answer not in ALGS:
        raise AssertionError(f"answer should be one of {ALGS}, got {answer!r}")
    if answer != gen.idxmin():
        raise AssertionError(f"not quite: look at the generation drawdown bars; {answer} has {gen[answer]:.3f}")
    _ok(f"{answer} has the lowest mean drawdown on generation: {gen[answer]:.3f}")


# -- 05 · ablations, 07 · scaling -------------------------------------------------------------------------------
def _count_answer(answer, expected: int, hint: str) -> None:
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise AssertionError(f"answer should be a whole number of parameters, got {answer!r}")
    if answer != expected:
        raise AssertionError(f"not quite: {answer:,}. Hint: {hint}")
    _ok(f"{answer:,} parameters")


def check_only_smaller_parameters(answer) -> None:
    """``answer``: the *Only smaller* editor's parameters for distilGPT-2 (``ablations.variant_parameters``)."""
    from mendlab.experiments import ablations

    _count_answer(answer, ablations.variant_parameters()["only_smaller"],
                  "D = min(m, n) = 768 for both shapes, r = min(1920, D), two blocks, two networks")


def check_neo_editor_parameters(answer) -> None:
    """``answer``: parameters of ``NetConfig(rank=512, n_blocks=1)`` on GPT-Neo-2.7B's edited weights."""
    from mendlab import scaling
    from mendlab.experiments import ablations
    from mendlab.nets import NetConfig, parameter_count

    model_type, fields = scaling.KNOWN["gpt-neo-2.7B"]
    expected = parameter_count(ablations.reference_shapes(model_type, **fields), NetConfig(rank=512, n_blocks=1))
    _count_answer(answer, expected, "D = 2560 + 10240 for both shapes, r = min(512, D), one block of "
                  "2Dr + D + 2ND with N = 3, one network per shape")


# -- 06 · batch editing ----------------------------------------------------------------------------------------
def _edit_set(g: torch.Generator, rows=(2, 3, 1, 2), keys=(5, 4, 6, 3), n_in=12, n_out=7):
    """A random :class:`~mendlab.edit.EditSet` of one weight "w" with keys, and its (K [in, M], V [out, M])."""
    from mendlab.edit import EditSet, Factors

    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
    k_owner = torch.repeat_interleave(torch.arange(len(keys)), torch.tensor(keys))
    common = torch.randn(n_in, generator=g, dtype=torch.float64)  # alike keys, as on prompts about one subject
    k = common + 0.7 * torch.randn(len(k_owner), n_in, generator=g, dtype=torch.float64)
    factors = Factors(torch.randn(len(owner), n_out, generator=g, dtype=torch.float64),
                      torch.randn(len(owner), n_in, generator=g, dtype=torch.float64))
    edits = EditSet({"w": factors}, {"w": owner}, len(rows), keys={"w": (k, k_owner)})
    own = torch.stack([edits[b].delta("w") for b in range(len(rows))])  # [B, out, in]
    return edits, k.T, torch.einsum("moi,mi->om", own[k_owner], k)


def check_least_squares(fn) -> None:
    """``fn(K [in, M], V [out, M], ridge)`` → ΔW [out, in], against ``EditSet.aggregate("least_squares")``."""
    g = _gen(7)
    edits, K, V = _edit_set(g)
    for ridge in (1e-2, 1e-1):
        mine = _call(fn, K, V, ridge, what="least-squares aggregation")
        ref = edits.aggregate("least_squares", ridge=ridge).delta("w")
        _close(mine, ref, f"ridge {ridge}, {K.shape[1]} keys of {K.shape[0]} dimensions (check λ and the "
               "transposes)", atol=1e-8, rtol=1e-6)
    K = torch.randn(16, 40, generator=g, dtype=torch.float64)
    V = torch.randn(6, 40, generator=g, dtype=torch.float64)
    ols = torch.linalg.lstsq(K.T, V.T).solution.T  # argmin_X ‖X K − V‖_F
    mine = _call(fn, K, V, 0.0, what="least-squares aggregation")
    _close(mine, ols, "ridge 0, 40 random keys of 16 dimensions: should be ordinary least squares", atol=1e-9)
    _ok("ΔW matches EditSet.aggregate at ridges 0.01 and 0.1 and, at ridge 0, torch.linalg.lstsq")


# -- 08 · the playground -------------------------------------------------------------------------------------------
def _random_result(rng: random.Random):
    from mendlab.playground import Check, EditResult

    words = ("Paris", "Rome", "Oslo")
    rows = [Check(rng.choice(("edit", "rephrase", "rephrase", "unrelated")), f"Q{i}?", rng.choice(words),
                  rng.choice(words), rng.choice(words), rng.random(), rng.random()) for i in range(rng.randint(1, 7))]
    return EditResult("random", [("Q0?", rows[0].expected)], rows, 0.0)


def check_fraction_followed(fn) -> None:
    """``fn(result)`` → the share of rephrase rows answering their target after the change, or None."""
    from mendlab.playground import Check, EditResult

    rng = random.Random(8)
    for i in range(60):
        r = _random_result(rng)
        mine = _call(fn, r, what="fraction_followed")
        if mine != r.generalisation:
            raise AssertionError(f"random result {i} (roles {[c.role for c in r.rows]}): yours {mine}, "
                                 f"EditResult.generalisation {r.generalisation}")
    hand = EditResult("by hand", [("Q?", "yes")], [
        Check("edit", "Q?", "yes", "no", "yes", 0.1, 0.9),
        Check("rephrase", "Q, again?", "yes", "no", "yes", 0.1, 0.8),
        Check("rephrase", "Q, once more?", "yes", "yes", "no", 0.6, 0.2),
        Check("rephrase", "Q, in other words?", "yes", "no", "no", 0.1, 0.3),
        Check("unrelated", "R?", "maybe", "maybe", "yes", 0.9, 0.1)], 0.0)
    if fn(hand) != 1 / 3:
        raise AssertionError("count rephrase rows only, and look at the answer *after* the change")
    bare = EditResult("by hand", [("Q?", "yes")], [hand.rows[0], hand.rows[-1]], 0.0)
    if fn(bare) is not None:
        raise AssertionError("without rephrase rows there is nothing to measure: return None")
    _ok("fraction_followed matches EditResult.generalisation on 60 random results and 2 hand-made ones")
