"""KE (KnowledgeEditor, De Cao et al. 2021; "efk" in the MEND repo), the hypernetwork baseline of the paper
(paper §5, after De Cao's ``one_shot_learner.py`` as MEND's ``algs/efk.py`` adapts it).

A conditioner reads the edit request as tokens, "prediction >> new label || input", through the base model's
input embedding (a trainable fp32 copy), a 1-layer bidirectional LSTM and Linear + tanh to a vector z. For every
edited weight W of stored shape (P0, P1) a weight-normalised MLP maps z to five pieces

    col_m [P1], row_m [P0], col_o [P1], row_o [P0], c          (the official split order)
    m = softmax(row_m) ⊗ col_m,  offset = softmax(row_o) ⊗ col_o   (softmax over the stored rows, P0)
    ΔW = max_scale · sigmoid(c) · (∇W ⊙ m + offset),   W ← W + ΔW      (added, as in efk.py)

∇W is the first-order gradient of the edit loss on x_e (no graph into the base model). Because m is rank-1,
∇W ⊙ m = Σ_t (δ_t ⊙ a)(u_t ⊙ b)ᵀ over the token rows of ∇W = Σ_t δ_t u_tᵀ (``rank1.capture``), with a/b the
out/in-side vectors of m, so an edit is :class:`~mendlab.edit.Factors` with one row per token plus one offset row
per request, and never a dense matrix.

Departures from the official code: the condition is built from tensors, not text (see :meth:`KE.cond_ids`): the
separators and FEVER's two labels are 4 learned embedding rows past the vocabulary, and "prediction" is the base
model's teacher-forced argmax at the label positions (zsRE's is its free-running top beam); the embedding's
``padding_idx`` is the model's pad id (official: 0, which is ``<s>`` for BART); requests are conditioned in
batches (packed LSTM; the official supports batch 1 only).

    editor = KE.for_model(model)
    train.train(editor, model, tokenizer, task.train, task.val)
    edit = editor.edit(model, tokenizer, EditExample("Where was Zorbo born?", "Kelvane"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from mendlab import rank1
from mendlab.edit import Edit, EditSet, Factors
from mendlab.editors.base import TrainableEditor, as_batch, fingerprint
from mendlab.families import edited_weights, is_conv1d, kind_of, shape_key
from mendlab.losses import aligned, forward, nll_per_example

# Rows appended to the conditioner's copy of the vocabulary, so the condition needs no tokenizer (the official
# cond is text, where ">>" and "||" are ordinary tokens and FEVER's labels are the words SUPPORTS/REFUTES).
SEP_LABEL, SEP_INPUT, REFUTES, SUPPORTS = range(4)  # offsets past the base vocabulary
N_EXTRA = 4


@dataclass(frozen=True)
class KEConfig:
    """KE sizes; the defaults are ``efk.py``'s (LSTM 512 per direction, condition 768, weight MLP 512, scale 1).

    ``passage_tokens``: a request whose label spans more tokens than this is a generation edit and is conditioned
    on its whole text (the official gen cond is the edit passage itself), not on "prediction >> label || input".
    """

    hidden: int = 512
    cond_dim: int = 768
    weight_hidden: int = 512
    max_scale: float = 1.0
    passage_tokens: int = 8

    def __post_init__(self):
        for name in ("hidden", "cond_dim", "weight_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"KEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_scale > 0:
            raise ValueError(f"KEConfig.max_scale must be > 0, got {self.max_scale}")
        if self.passage_tokens < 0:
            raise ValueError(f"KEConfig.passage_tokens must be >= 0, got {self.passage_tokens}")


class Conditioner(nn.Module):
    """Token ids → z [B, cond_dim]: embedding, 1-layer BiLSTM, tanh(Linear([h_fwd; h_bwd])).

    The LSTM summary is the concatenation of the last layer's final forward and final backward states, as
    allennlp's ``PytorchSeq2VecWrapper`` in the official code returns; sequences are packed, so padding never
    enters the LSTM and a batch of B requests gives the same z as B single requests.
    """

    def __init__(self, vocab: int, dim: int, hidden: int, cond_dim: int, padding_idx: int | None):
        super().__init__()
        self.embedding = nn.Embedding(vocab + N_EXTRA, dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(dim, hidden, num_layers=1, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden, cond_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``ids`` [B, L] (right-padded), ``lengths`` [B] → [B, cond_dim]."""
        packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: [2, B, hidden], back in the input order
        return torch.tanh(self.linear(torch.cat([h[-2], h[-1]], dim=-1)))


class WeightNet(nn.Module):
    """z [B, cond_dim] → the mask/offset vectors of one weight of stored shape (P0, P1) (``ConditionedParameter``)."""

    def __init__(self, stored: tuple[int, int], cond_dim: int, hidden: int):
        super().__init__()
        self.stored = tuple(stored)
        p0, p1 = self.stored
        self.net = nn.Sequential(weight_norm(nn.Linear(cond_dim, hidden)), nn.Tanh(),
                                 weight_norm(nn.Linear(hidden, 2 * (p0 + p1) + 1)))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(softmax(row_m) [B, P0], col_m [B, P1], softmax(row_o) [B, P0], col_o [B, P1], c [B])."""
        p0, p1 = self.stored
        col_m, row_m, col_o, row_o, c = self.net(z).split([p1, p0, p1, p0, 1], dim=-1)
        return row_m.softmax(-1), col_m, row_o.softmax(-1), col_o, c.squeeze(-1)


def _key(name: str) -> str:
    return name.replace(".", "__")


class KE(TrainableEditor):
    """KnowledgeEditor for one base model's edited weights (``names``): a conditioner and one weight network per
    edited matrix (no sharing, as in the official code)."""

    alg = "ke"
    config_class = KEConfig

    def __init__(self, config: KEConfig, shapes: dict[str, tuple[int, int]], conv1d: dict[str, bool], kind: str,
                 base: dict, vocab: int, embed_dim: int, pad_id: int | None):
        super().__init__()
        self.config, self.kind, self.base = config, kind, base
        self.names, self.conv1d = list(shapes), dict(conv1d)
        self.shapes = {n: tuple(s) for n, s in shapes.items()}  # (in, out), as shape_key
        self.vocab, self.embed_dim, self.pad_id = int(vocab), int(embed_dim), pad_id
        self.conditioner = Conditioner(vocab, embed_dim, config.hidden, config.cond_dim, pad_id)
        self.weights = nn.ModuleDict({
            _key(n): WeightNet((i, o) if self.conv1d[n] else (o, i), config.cond_dim, config.weight_hidden)
            for n, (i, o) in self.shapes.items()})

    @classmethod
    def for_model(cls, model: nn.Module, config: KEConfig | None = None, names: Sequence[str] | None = None) -> KE:
        """A fresh editor for ``model``'s edited weights (the family's defaults unless ``names``); the conditioner's
        embedding starts as an fp32 copy of the model's input embedding, its 4 extra rows (two separators and the
        two classifier labels) as draws around the mean embedding."""
        names = edited_weights(model, names)
        emb = model.get_input_embeddings().weight.detach()
        pad = getattr(model.config, "pad_token_id", None)
        editor = cls(config or KEConfig(), {n: shape_key(model, n) for n in names},
                     {n: is_conv1d(model, n) for n in names}, kind_of(model), fingerprint(model, names),
                     emb.shape[0], emb.shape[1], pad)
        with torch.no_grad():
            w = emb.float().cpu()
            extra = w.mean(0) + w.std() * torch.randn(N_EXTRA, w.shape[1])
            editor.conditioner.embedding.weight.copy_(torch.cat([w, extra]))
        return editor.to(emb.device)

    # -- the condition ------------------------------------------------------------------------------------------
    def cond_ids(self, enc: dict, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditioner's input per request, built from tensors: ``ids`` [B, L] (right-padded) and lengths [B].

        - sequences: [base model's argmax tokens at the label positions (teacher-forced, from ``logits``),
          SEP_LABEL, label tokens, SEP_INPUT, the prompt's tokens] — "prediction >> new label || input";
          a request with more than ``passage_tokens`` label tokens is conditioned on its whole text instead
          (decoder: the non-pad ``input_ids``, i.e. passage + continuation; seq2seq: source then labels);
        - classifier: [SUPPORTS or REFUTES by the sign of the base logit, SEP_LABEL, the label's token,
          SEP_INPUT, the non-pad ``input_ids``].
        SEP_LABEL, SEP_INPUT, REFUTES and SUPPORTS are learned rows past the base vocabulary.
        """
        v = self.vocab
        ids, mask, labels = enc["input_ids"], enc["attention_mask"].bool(), enc["labels"]
        logits = logits.detach()
        seqs = []
        if self.kind == "classifier":
            for b in range(ids.shape[0]):
                pred = v + (SUPPORTS if float(logits[b].reshape(-1)[0]) > 0 else REFUTES)
                label = v + (SUPPORTS if float(labels[b]) > 0.5 else REFUTES)
                head = torch.tensor([pred, v + SEP_LABEL, label, v + SEP_INPUT], device=ids.device)
                seqs.append(torch.cat([head, ids[b][mask[b]]]))
        else:
            lg, lb = aligned(self.kind, logits, labels)
            for b in range(ids.shape[0]):
                where = lb[b] != -100
                target = lb[b][where]
                if self.kind == "decoder":
                    prompt = ids[b][mask[b] & (labels[b] == -100)]
                    passage = ids[b][mask[b]]
                else:
                    prompt = ids[b][mask[b]]
                    passage = torch.cat([prompt, target])
                if target.numel() > self.config.passage_tokens:
                    seqs.append(passage)
                    continue
                pred = lg[b][where].argmax(-1)
                if pred.numel() and int(pred.max()) >= v:
                    raise ValueError(f"the model predicts token {int(pred.max())} beyond its input embedding "
                                     f"({v} rows); KE's conditioner reads predictions through that embedding")
                sep = lambda s: torch.tensor([v + s], device=ids.device)  # noqa: E731
                seqs.append(torch.cat([pred, sep(SEP_LABEL), target, sep(SEP_INPUT), prompt]))
        lengths = torch.tensor([len(s) for s in seqs])
        return pad_sequence(seqs, batch_first=True, padding_value=self.pad_id or 0), lengths

    def condition(self, enc: dict, logits: torch.Tensor) -> torch.Tensor:
        """z [B, cond_dim] for the requests of ``enc`` (``logits``: the base model's on ``enc``)."""
        ids, lengths = self.cond_ids(enc, logits)
        return self.conditioner(ids.to(self.conditioner.embedding.weight.device), lengths)

    def _update_parts(self, name: str, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense (mask m, offset, scale) of weight ``name`` for conditions ``cond`` [B, cond_dim] (or [cond_dim]):
        m and offset [B, P0, P1] in the weight's stored layout, scale = max_scale·sigmoid(c) [B]. For inspection
        and tests; ``edit`` never forms them."""
        single = cond.dim() == 1
        row_m, col_m, row_o, col_o, c = self.weights[_key(name)](cond.reshape(-1, cond.shape[-1]))
        mask, offset = torch.einsum("bi,bj->bij", row_m, col_m), torch.einsum("bi,bj->bij", row_o, col_o)
        scale = self.config.max_scale * torch.sigmoid(c)
        return (mask[0], offset[0], scale[0]) if single else (mask, offset, scale)

    # -- editing --------------------------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer_or_batch, examples=None) -> Edit:
        """An :class:`Edit` for one or many ``EditExample``s (with a tokenizer) or a prepared ``EditBatch``.
        Several requests give ONE edit, the sum of their per-request edits (the official KE edits one request at
        a time; summing separately computed edits is how the paper batches, §5.3)."""
        return self.edit_many(model, tokenizer_or_batch, examples).merged()

    def edit_many(self, model: nn.Module, tokenizer_or_batch, examples=None) -> EditSet:
        """An :class:`EditSet` (edit b = editing request b alone), keeping the graph to the editor's parameters.

        One forward and backward of the base model gives the token rows of ∇W and the base predictions for the
        condition. The loss is the sum of per-request mean NLLs, so request b's rows are its own gradient; each
        request is conditioned on its own text.
        """
        batch = as_batch(model, tokenizer_or_batch, examples)
        enc = batch.edit_inner if hasattr(batch, "edit_inner") else batch
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.enable_grad(), rank1.capture(model, self.names) as cap:
            logits = forward(model, enc)
            rows = cap.rows(nll_per_example(self.kind, logits, enc["labels"]).sum())
        dtype = self.conditioner.linear.weight.dtype  # the editor's own precision, also under autocast
        z = self.condition(enc, logits).to(dtype)
        n = int(enc["input_ids"].shape[0])
        factors, owners = {}, {}
        for name in self.names:
            r, conv = rows[name], self.conv1d[name]
            row_m, col_m, row_o, col_o, c = (x.to(dtype) for x in self.weights[_key(name)](z))
            s = (self.config.max_scale * torch.sigmoid(c)).unsqueeze(-1)  # [B, 1]
            # the stored rows (P0) are `out` for nn.Linear and `in` for Conv1D
            (in_m, out_m), (in_o, out_o) = ((row_m, col_m), (row_o, col_o)) if conv else ((col_m, row_m),
                                                                                          (col_o, row_o))
            owner = r.owner.to(z.device)
            delta = torch.cat([s[owner] * r.delta.to(z.device, dtype) * out_m[owner], s * out_o])
            u = torch.cat([r.u.to(z.device, dtype) * in_m[owner], in_o])
            owner = torch.cat([owner, torch.arange(n, device=z.device)])
            order = torch.sort(owner, stable=True).indices  # EditSet wants each request's rows together
            factors[name], owners[name] = Factors(delta[order], u[order], conv), owner[order]
        meta = {"editor": self.alg, "n_requests": n}
        keys = {k: (r.u.detach(), r.owner) for k, r in rows.items()}  # the raw layer inputs, without offset rows
        return EditSet(factors, owners, n, meta, keys=keys)

    def param_groups(self, lr: float, lr_lr: float) -> list[dict]:
        """One group at ``lr`` (KE has no learned step sizes; ``lr_lr`` is unused)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    # -- saving -------------------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"config": asdict(self.config), "kind": self.kind,
                "shapes": {n: list(s) for n, s in self.shapes.items()}, "conv1d": self.conv1d, "vocab": self.vocab,
                "embed_dim": self.embed_dim, "pad_id": self.pad_id}

    @classmethod
    def from_config_dict(cls, cfg: dict) -> KE:
        return cls(KEConfig(**cfg["config"]), {n: tuple(s) for n, s in cfg["shapes"].items()}, cfg["conv1d"],
                   cfg["kind"], cfg["base_model"], cfg["vocab"], cfg["embed_dim"], cfg["pad_id"])

    def extra_repr(self) -> str:
        return f"base={self.base['name']!r}, weights={len(self.names)}, params={self.num_parameters():,}"
