"""How much memory MEND needs on a model of any size (the paper edits GPT-J-6B and T5-XXL), before you own one.

:func:`estimate` answers from a Hugging Face config alone: model and editor are built on the meta device (no
weights exist) and one edit, or one editor-training step, is replayed there op for op as :mod:`mendlab.editors.mend`
and :func:`mendlab.train.edit_step` run it, while a dispatch mode counts the bytes of every tensor created and
freed. The peak, plus what lives through the whole step, is the estimate (:class:`Estimate`): allocated bytes, like
``torch.cuda.max_memory_allocated`` (no CUDA context, workspaces or allocator slack; see :data:`HEADROOM`).
:func:`measure` sets it beside a real step's peak on this CPU; :func:`build_model` and :func:`real_step` run the
real step on any device (``benchmarks/gpu_scaling.py``).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from dataclasses import asdict, dataclass
from unittest import mock

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from mendlab import losses, rank1, zoo
from mendlab.data import EditBatch
from mendlab.edit import EditSet, Factors
from mendlab.editors.mend import MEND
from mendlab.families import get_family
from mendlab.nets import Normalizer
from mendlab.train import TrainConfig, edit_step, optimizer

GIB = 2 ** 30
BUDGETS_GB = (24, 40, 80)
HEADROOM = 0.9  # a card "fits" a step whose estimate is at most 90 % of its memory
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SEQ_LEN, TARGET_LEN, EDIT_BATCH, TRAIN_BATCH = 32, 6, 1, 10
_V11 = dict(feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False, d_kv=64, num_layers=24,
            num_decoder_layers=24)
KNOWN: dict[str, tuple[str, dict]] = {  # name -> (model_type, config fields from the published shapes)
    "distilgpt2": ("gpt2", dict(n_layer=6)), "gpt2": ("gpt2", {}),
    "gpt2-medium": ("gpt2", dict(n_layer=24, n_embd=1024, n_head=16)),
    "gpt2-xl": ("gpt2", dict(n_layer=48, n_embd=1600, n_head=25)),
    "gpt-neo-2.7B": ("gpt_neo", dict(num_layers=32, hidden_size=2560, num_heads=20, window_size=256,
                                     attention_types=[[["global", "local"], 16]], max_position_embeddings=2048)),
    "gpt-j-6B": ("gptj", dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048)),
    "t5-small": ("t5", {}),  # T5 v1.0 small: relu, d_ff 2048
    "t5-xl": ("t5", dict(d_model=2048, d_ff=5120, num_heads=32, **_V11)),  # v1.1 (google/t5-xl-ssm-nq's shape)
    "t5-xxl": ("t5", dict(d_model=4096, d_ff=10240, num_heads=64, **_V11)),  # v1.1
}
NOTES = {"t5-small": "v1.0 (relu)", "t5-xl": "v1.1 (gated-gelu)", "t5-xxl": "v1.1 (gated-gelu)"}
PAPER_MODELS = ("distilgpt2", "gpt2-xl", "gpt-neo-2.7B", "gpt-j-6B", "t5-xl", "t5-xxl")
MEASURED = ("tiny-gpt2", "gpt2", "gpt2-medium", "t5-small", "tiny-gpt2:bfloat16")  # NAME[:DTYPE]


def resolve_config(spec):
    """A ``PretrainedConfig`` from a config, a dict with ``model_type`` and fields, a JSON object of them, a name
    of :data:`KNOWN`, or a zoo name (its shape, the vocabulary at the zoo's upper bound)."""
    if isinstance(spec, transformers.PretrainedConfig):
        return spec
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        spec = json.loads(spec)
    if isinstance(spec, dict):
        if "model_type" not in spec:
            raise ValueError(f"a config dict needs a model_type, got keys {sorted(spec)}")
        return transformers.AutoConfig.for_model(**spec)
    if isinstance(spec, str) and spec in KNOWN:
        return transformers.AutoConfig.for_model(KNOWN[spec][0], **KNOWN[spec][1])
    if isinstance(spec, str) and zoo.known(spec):
        s = zoo.spec(spec, "ci")
        return transformers.AutoConfig.for_model(s.model_type, vocab_size=s.vocab_size, **s.config)
    raise ValueError(f"unknown model {spec!r}: give one of {sorted(KNOWN)}, a zoo name or a JSON object with a "
                     "model_type and config fields")


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one edit (``mode="edit"``) or one editor-training step (``"train"``), in bytes.

    Alive through the step: ``base_weights`` (the model's parameters and buffers in ``dtype``), ``editor_weights``
    (editor networks and step sizes α, float32; the normalisers' float64 statistics), ``adam_state`` (training:
    Adam's two float32 moments per editor parameter). Alive at the peak, by the phase that made them:
    ``capture_activations``: the edit's base pass, a forward whose graph starts at the earliest edited layer
    (what it saves, the logits, the gradients at the edited layers' outputs; rows that are views of these);
    ``rank1_rows``: copies of u [rows, in] and δ [rows, out] per edited weight, a row per token (paper §3.1);
    ``editor_activations``: the editor on those rows (float32 copies, normalised rows, the low-rank MLPs, the
    factors; in training their graph and the normalisers' float64 pass);
    ``post_edit``: training: the pre-edit logits on x_loc, the edited model's forward on x'_e and x_loc (``batch``
    sequences each, stacked, full-vocabulary logits, graph down to the earliest edited layer), the losses;
    ``backward``: training: the gradients flowing back to the editor, its parameters' included;
    ``optimizer_temp``: training, when the optimiser step is the peak: the editor's gradients and Adam's temporary
    (all parameters' size with CUDA's foreach kernel, twice the largest one in the CPU's loop)."""

    model: str
    model_type: str
    mode: str
    dtype: str
    device: str
    batch: int
    seq_len: int
    base_params: int
    editor_params: int
    base_weights: int
    editor_weights: int
    adam_state: int
    capture_activations: int
    rank1_rows: int
    editor_activations: int
    post_edit: int
    backward: int
    optimizer_temp: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f) for f in PARTS)

    def fits(self, gb: float) -> bool:
        """Whether the step fits a card of ``gb`` GiB with (1 − :data:`HEADROOM`) of it left free."""
        return self.total <= HEADROOM * gb * GIB

    def row(self) -> dict:
        """The fields, ``total``, ``total_gib`` and ``fits_<N>gb`` per card of :data:`BUDGETS_GB`."""
        return asdict(self) | {"total": self.total, "total_gib": round(self.total / GIB, 3)} | {
            f"fits_{gb}gb": self.fits(gb) for gb in BUDGETS_GB}


_PHASES = ("capture_activations", "rank1_rows", "editor_activations", "post_edit", "backward", "optimizer_temp")
PARTS = ("base_weights", "editor_weights", "adam_state", *_PHASES)


class _Tracker(TorchDispatchMode):
    """Bytes of every storage an op creates under it (views and in-place results alias their inputs and are not
    new), counted by :attr:`phase` until the storage is freed; ``at_peak``: the counts at the peak of their sum."""

    def __init__(self):
        super().__init__()
        self.phase, self.live, self.peak = _PHASES[0], dict.fromkeys(_PHASES, 0), 0
        self.at_peak, self._seen = dict(self.live), WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aliased = {x.untyped_storage()._cdata for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)}
        for st in (t.untyped_storage() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)):
            if st not in self._seen and st._cdata not in aliased:
                self._seen[st] = self.phase
                weakref.finalize(st, self._free, self.phase, st.nbytes())
                self.live[self.phase] += st.nbytes()
                if sum(self.live.values()) > self.peak:
                    self.peak, self.at_peak = sum(self.live.values()), dict(self.live)
        return out

    def _free(self, phase: str, n: int) -> None:
        self.live[phase] -= n


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _inputs(kind: str, batch: int, seq_len: int, target_len: int, device, vocab: int = 1) -> dict:
    """A batch of random tokens, masks all ones: ``input_ids`` [batch, seq_len] and ``labels`` (decoders: the last
    ``target_len`` tokens; encoder-decoders: a decoder input of ``target_len`` tokens, all labelled)."""
    ids = torch.randint(vocab, (batch, seq_len), device=device)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "seq2seq":
        dec = torch.randint(vocab, (batch, target_len), device=device)
        return enc | {"decoder_input_ids": dec, "decoder_attention_mask": torch.ones_like(dec), "labels": dec.clone()}
    if kind == "classifier":
        return enc | {"labels": torch.zeros(batch, device=device)}
    labels = torch.full_like(ids, -100)
    labels[:, -target_len:] = ids[:, -target_len:]
    return enc | {"labels": labels}


def _model_inputs(enc: dict) -> dict:
    """The model's inputs without the all-ones masks (Hugging Face skips them; reading one on meta fails)."""
    return {k: v for k, v in enc.items() if k in ("input_ids", "decoder_input_ids")}


def _capture(model, names, kind: str, enc: dict, target_len: int, training: bool, tr: _Tracker):
    """MEND's base pass (``losses.labelled_logits``, ``rank1.capture``, ``Capture.rows``): the rows (u, δ,
    owner) per edited weight, and the logits (alive until the edit returns). A decoder's last position has δ = 0
    and is dropped, as ``rows`` drops it; its LM head runs only where a label follows (``logits_to_keep``)."""
    keep = torch.arange(enc["input_ids"].shape[1] - target_len - 1, enc["input_ids"].shape[1] - 1, device="meta")
    labelled = kind == "decoder" and losses._keeps_logits(type(model))
    with torch.enable_grad(), rank1.capture(model, names) as cap:
        logits = model(**_model_inputs(enc), **({"logits_to_keep": keep} if labelled else {})).logits
        k, labels = ("seq2seq", enc["labels"][:, keep + 1]) if labelled else (kind, enc["labels"])
        loss = losses.nll_per_example(k, logits, labels).sum() if training else losses.nll(k, logits, labels)
        grads = torch.autograd.grad(loss, [cap.outputs[n] for n in names], allow_unused=True)
        tr.phase, rows, b = "rank1_rows", {}, enc["input_ids"].shape[0]
        for name, g in zip(names, grads, strict=True):
            x = cap.inputs[name]
            owner = torch.arange(b, device=x.device).repeat_interleave(x[..., 0].numel() // b)
            u = x.flatten(0, -2).detach()
            d = (torch.zeros_like(cap.outputs[name]) if g is None else g).flatten(0, -2)
            if kind == "decoder":
                keep_rows = torch.arange(u.shape[0] - b, device=u.device)
                u, d, owner = (t.index_select(0, keep_rows) for t in (u, d, owner))
            rows[name] = (u, d, owner)
        del grads, g, loss
    return rows, logits


def _editor(net, rows: dict, training: bool, tr: _Tracker) -> dict:
    """``EditorNet.forward_all`` and the factors (α δ̃, ũ) of ``MEND._edit`` (graph kept in training); the
    normalisers' statistics are read without their check that they have seen rows (a meta tensor has no value)."""
    tr.phase = "editor_activations"
    stats = lambda self, dtype: (self.mean.to(dtype), self.std.to(dtype) + 1e-7)  # noqa: E731
    with torch.set_grad_enabled(training), mock.patch.object(Normalizer, "_stats", stats):
        pseudo = net.forward_all({n: (u, d) for n, (u, d, _) in rows.items()})
        return {n: (net.step_size(n) * d, u) for n, (u, d) in pseudo.items()}


def _pad_rows(owner: torch.Tensor, size: int, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``edit._pad_rows`` for requests of equal length (its row counts would need a meta tensor's values)."""
    r = owner.numel() // size
    pos = torch.arange(owner.numel(), device=owner.device) % r
    return tuple(x.new_zeros(size, r, x.shape[-1]).index_put((owner, pos), x) for x in rows)


def _train_loss(model, editor, encs: dict, target_len: int, tr: _Tracker) -> torch.Tensor:
    """``train.edit_step`` (c_edit 0.1, c_loc 1): pre-edit logits on x_loc, the edits of x_e, the post-edit logits
    on x'_e and x_loc, the losses; what it holds is freed on return, as edit_step's is."""
    tr.phase, kind = "post_edit", editor.kind
    with torch.no_grad():
        pre = model(**_model_inputs(encs["loc"])).logits
    rows, logits = _capture(model, editor.names, kind, encs["in"], target_len, True, tr)
    factors = _editor(editor.net, rows, True, tr)
    edits = EditSet({n: Factors(*f, editor.conv1d[n]) for n, f in factors.items()}, {n: r[2] for n, r in rows.items()},
                    encs["in"]["input_ids"].shape[0], keys={n: (r[0], r[2]) for n, r in rows.items()})
    del logits, rows, factors  # edit_many has returned: its logits and δ rows are freed, u is kept as the keys
    tr.phase = "post_edit"
    with mock.patch("mendlab.edit._pad_rows", _pad_rows):
        post_outer, post_loc = edits.forward_many(model, [_model_inputs(encs["out"]), _model_inputs(encs["loc"])])
    labels = encs["out"]["labels"]
    l_edit = losses.nll_per_example(kind, post_outer, labels).mean()
    l_loc = losses.kl_loc(kind, pre, post_loc, encs["loc"])
    losses.correct(kind, post_outer.detach(), labels).float().mean()
    return 0.1 * l_edit + 1.0 * l_loc + pre.new_zeros((), dtype=torch.float32)


def build_model(config, dtype: str = "float32", device="meta"):
    """The head model of ``config``'s family (:mod:`mendlab.families`) built directly on ``device`` in ``dtype``
    with random weights (nothing is read or downloaded), frozen and in eval mode."""
    config = resolve_config(config)
    with torch.device(device):
        model = getattr(transformers, get_family(config).auto_class).from_config(config, dtype=DTYPES[dtype])
    return model.eval().requires_grad_(False)


def estimate(model_config, editor_config=None, dtype: str = "float32", batch: int | None = None,
             seq_len: int = SEQ_LEN, mode: str = "edit", *, target_len: int = TARGET_LEN, device: str = "cuda",
             names=None) -> Estimate:
    """Peak memory of one MEND edit (``mode="edit"``: ``batch`` requests edited together, default 1) or of one
    editor-training step (``"train"``: ``batch`` requests, default ``TrainConfig.edits_per_step`` = 10), each a
    sequence of ``seq_len`` tokens whose answer is its last ``target_len`` (an encoder-decoder's decoder input).
    ``model_config``: anything :func:`resolve_config` takes; ``editor_config``: a ``NetConfig`` (default MEND's);
    ``dtype``: the base model's (the editor is float32); ``device``: ``"cuda"`` or ``"cpu"`` (only Adam's temporary
    differs); ``names``: the edited weights (default: the family's). Model and editor are built on the meta
    device and the step replayed there on meta tensors: nothing is allocated."""
    if mode not in ("edit", "train") or dtype not in DTYPES:
        raise ValueError(f"mode must be edit or train and dtype one of {sorted(DTYPES)}, got {mode!r}, {dtype!r}")
    batch = batch or (TRAIN_BATCH if mode == "train" else EDIT_BATCH)
    if not 0 < target_len < seq_len or batch < 1:
        raise ValueError(f"need batch >= 1 and 0 < target_len < seq_len, got {batch}, {target_len}, {seq_len}")
    config = resolve_config(model_config)
    model = build_model(config, dtype)
    with torch.device("meta"):
        editor = MEND.for_model(model, editor_config, names).train(mode == "train")
    tr, encs = _Tracker(), {k: _inputs(editor.kind, batch, seq_len, target_len, "meta") for k in ("in", "out", "loc")}
    with tr:
        if mode == "edit":
            with torch.no_grad():
                rows, logits = _capture(model, editor.names, editor.kind, encs["in"], target_len, False, tr)
                factors = _editor(editor.net, rows, False, tr)
            del rows, logits, factors
        else:
            loss = _train_loss(model, editor, encs, target_len, tr)
            tr.phase = "backward"
            loss.backward()
            del loss
    parts = tr.at_peak
    params = list(editor.net.parameters())
    p_bytes = _nbytes(params)
    if mode == "train":  # the optimiser step: the gradients and Adam's temporary
        temp = p_bytes if device.startswith("cuda") else 2 * max(_nbytes([p]) for p in params)
        if p_bytes + temp > sum(parts.values()):
            parts = dict.fromkeys(_PHASES, 0) | {"optimizer_temp": p_bytes + temp}
    named = isinstance(model_config, str) and not model_config.lstrip().startswith("{")
    return Estimate(model_config if named else config.model_type, config.model_type, mode, dtype, device, batch,
                    seq_len, sum(p.numel() for p in model.parameters()), editor.num_parameters(),
                    _nbytes(model.parameters()) + _nbytes(model.buffers()), p_bytes + _nbytes(editor.net.buffers()),
                    2 * p_bytes if mode == "train" else 0, **parts)


def paper_table(dtypes=("float32", "bfloat16"), models=PAPER_MODELS, modes=("edit", "train"), **kw) -> list[dict]:
    """The paper's models from their configs alone: parameters of the model and of MEND's default editor on the
    family's default weights, edit and training memory (GiB) per dtype, and which cards (GB) each fits."""
    rows = []
    for name in models:
        rows.append({"model": name, "model_type": resolve_config(name).model_type})
        for dtype, mode in ((d, m) for d in dtypes for m in modes):
            e = estimate(name, dtype=dtype, mode=mode, **kw)
            rows[-1] |= {"base_params": e.base_params, "editor_params": e.editor_params,
                         f"{mode}_{dtype}_gib": round(e.total / GIB, 2),
                         f"{mode}_{dtype}_fits": "/".join(str(gb) for gb in BUDGETS_GB if e.fits(gb)) or "none"}
        rows[-1]["note"] = NOTES.get(name, "")
    return rows


def real_step(model, mode: str = "edit", batch: int | None = None, seq_len: int = SEQ_LEN,
              target_len: int = TARGET_LEN):
    """(editor, inputs, prime, step) for a real ``model``, on its device: ``step()`` is one edit (no grad, editor in
    eval mode) or one training step (``train.edit_step``, backward, clipping, Adam); ``prime()`` is what comes
    before it in use (a training-mode edit that fills the normalisers; a first step that makes Adam's state)."""
    device = next(model.parameters()).device
    with torch.device(device):
        editor = MEND.for_model(model)
    batch = batch or (TRAIN_BATCH if mode == "train" else EDIT_BATCH)
    encs = [_inputs(editor.kind, batch, seq_len, target_len, device, model.config.vocab_size) for _ in range(3)]
    if mode == "edit":
        prime = lambda: (editor.train().edit(model, encs[0]), editor.eval())
        return editor, encs[0], prime, lambda: torch.no_grad()(editor.edit)(model, encs[0])
    cfg = TrainConfig(device=str(device))
    opt = optimizer(editor.train(), cfg)

    def train_step():
        opt.zero_grad(set_to_none=True)
        edit_step(editor, model, EditBatch(*encs), cfg)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(editor.parameters(), cfg.grad_clip)
        opt.step()
    return editor, encs[0], train_step, train_step


def proc_status(key: str) -> int:
    """A field of /proc/self/status in bytes (``VmRSS``: resident memory now, ``VmHWM``: its peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def reset_peak() -> None:
    """Reset this process's peak resident memory (``VmHWM``) to its current resident memory."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


_MICRO = {"gpt2": dict(n_layer=3, n_embd=64, n_head=2, vocab_size=512),
          "t5": dict(num_layers=2, num_decoder_layers=2, d_model=64, d_ff=128, num_heads=2, d_kv=32, vocab_size=512)}


def _worker(spec: dict) -> dict:
    """One measurement in a fresh interpreter: the step on a micro model of the family first (gpt2, t5: the code
    pages, thread pool and arenas it touches become resident), the baseline (``VmRSS``), model and editor built,
    the step primed, the peak reset (:func:`reset_peak`), the step: ``VmHWM`` − baseline. Resident memory, not
    torch's profiler, counts all that the step costs the machine; :func:`measure` sets glibc's
    ``MALLOC_MMAP_THRESHOLD_`` to 64 KiB, so every freed block from 64 KiB up goes back to the OS and resident
    memory follows the live tensors (as ``max_memory_allocated`` does on CUDA) instead of keeping freed heap."""
    torch.set_num_threads(1)
    config = resolve_config(spec.pop("model"))
    dtype = spec.pop("dtype")
    if config.model_type in _MICRO:  # the micro model and its editor are freed before the baseline
        micro = {**config.to_diff_dict(), "model_type": config.model_type, **_MICRO[config.model_type]}
        [run() for run in real_step(build_model(micro, dtype, "cpu"), **spec)[2:]]
    gc.collect()
    baseline = proc_status("VmRSS")
    model = build_model(config, dtype, "cpu")
    _, _, prime, step = real_step(model, **spec)
    prime()
    gc.collect()
    reset_peak()
    step()
    return {"peak": proc_status("VmHWM") - baseline, "baseline": baseline}


def measure(model: str, dtype: str = "float32", mode: str = "edit", batch: int | None = None,
            seq_len: int = SEQ_LEN, target_len: int = TARGET_LEN, timeout: float = 1200) -> dict:
    """The peak memory of one step of ``model`` measured on this CPU in a fresh interpreter at one thread
    (:func:`_worker`), beside :func:`estimate` (``device="cpu"``) and the relative error estimate / measured − 1."""
    batch = batch or (TRAIN_BATCH if mode == "train" else EDIT_BATCH)
    spec = dict(model=model, dtype=dtype, mode=mode, batch=batch, seq_len=seq_len, target_len=target_len)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-m", "mendlab.scaling", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(f"measuring {spec} failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    est = estimate(model, None, dtype, batch, seq_len, mode, target_len=target_len, device="cpu")
    return {"model": model, "mode": mode, "dtype": dtype, "batch": batch, "seq_len": seq_len,
            "base_params": est.base_params, "editor_params": est.editor_params, "measured_mib": got["peak"] / 2 ** 20,
            "estimated_mib": est.total / 2 ** 20, "rel_error": est.total / got["peak"] - 1}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
