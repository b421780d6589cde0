"""Self-sampled generation targets, as the paper builds its Wikitext edits (§5.1, Appendix C.4).

There, y_e is a 10-token sample of the pre-trained model itself after the passage x_e, and the model's greedy
continuation matches it for under 1 % of the requests. So an edit asks for text the model finds plausible but
would not write: a learned editor can then learn *how* to move the model towards a continuation rather than
memorise a few fixed strings. :func:`retarget` gives every generation request of a task such a target: it samples
at temperature 1 from the nucleus holding 0.9 of the probability (special tokens excluded) and draws again, up to
``tries`` times, for any request whose sample is the greedy continuation. Requests the model is certain about in
every try are dropped and counted.

Samples are cached by model weights, prompts and settings (``$MENDLAB_CACHE/selfsample``), so a task is the same
however often it is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import torch

from mendlab.config import cache_dir
from mendlab.data import EditExample


@dataclass(frozen=True)
class SampleConfig:
    n_tokens: int = 10
    temperature: float = 1.0
    # nucleus sampling (Holtzman et al., 2020): draw from the smallest set of tokens holding top_p of the mass.
    # The paper does not state its sampling settings. A tiny LM that copies names imperfectly puts ~0.5 % on each
    # of hundreds of wrong names; at top_p 1 most 10-token samples then contain one such name, a token no
    # continuation of the passage would use, so the edit would ask for noise rather than a plausible text.
    top_p: float = 0.9
    tries: int = 8
    seed: int = 0
    batch_size: int = 512


def _model_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def _sample_rows(model, rows: list[list[int]], banned: torch.Tensor, cfg: SampleConfig, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of equal length → (sampled tokens [B, n], whether every token was the argmax [B]). The draws are
    made on the CPU generator ``gen``, so a seed gives the same targets on any device."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor(rows, dtype=torch.long, device=device), use_cache=True)
    picked, greedy = [], torch.ones(len(rows), dtype=torch.bool)
    for step in range(cfg.n_tokens):
        logits = out.logits[:, -1].float().cpu()
        logits[:, banned] = -torch.inf
        probs = _nucleus(torch.softmax(logits / cfg.temperature, dim=-1), cfg.top_p)
        nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        greedy &= nxt == logits.argmax(-1)
        picked.append(nxt)
        if step + 1 < cfg.n_tokens:
            out = model(input_ids=nxt[:, None].to(device), cache=out.cache, use_cache=True)
    return torch.stack(picked, dim=1), greedy


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` [B, V] restricted to each row's nucleus (the most likely tokens until ``top_p`` of the mass is
    covered; the argmax always stays), renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # the mass before this token already covers top_p
    kept = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
    return kept / kept.sum(-1, keepdim=True)


def sample_targets(model, tok, prompts: list[str], config: SampleConfig | None = None, progress: bool = True
                   ) -> tuple[list[str | None], dict]:
    """A target per prompt (None where every try gave the greedy continuation) and stats: ``dropped``,
    ``first_try_greedy`` (the fraction of first samples equal to the greedy continuation), ``tries``."""
    from tqdm.auto import tqdm

    cfg = config or SampleConfig()
    model.eval()
    banned = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[str | None] = [None] * len(prompts)
    todo = list(range(len(prompts)))
    first_greedy = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=len(prompts), desc="self-sample targets", disable=not progress, mininterval=1.0)
    for attempt in range(cfg.tries):
        by_len: dict[int, list[int]] = {}
        for i in todo:
            by_len.setdefault(len(encoded[i]), []).append(i)
        again = []
        for length in sorted(by_len):
            group = by_len[length]
            for start in range(0, len(group), cfg.batch_size):
                chunk = group[start:start + cfg.batch_size]
                tokens, greedy = _sample_rows(model, [encoded[i] for i in chunk], banned, cfg, gen)
                for i, row, is_greedy in zip(chunk, tokens.tolist(), greedy.tolist(), strict=True):
                    text = tok.decode(row, clean_up_tokenization_spaces=False)
                    if is_greedy or tok(text, add_special_tokens=False)["input_ids"] != row:
                        again.append(i)  # the greedy continuation, or a text that does not tokenize back
                    else:
                        out[i] = text
                        bar.update(1)
                first_greedy += int(greedy.sum()) if attempt == 0 else 0
        todo = again
        if not todo:
            break
    bar.close()
    return out, {"dropped": len(todo), "first_try_greedy": round(first_greedy / max(len(prompts), 1), 4),
                 "tries": cfg.tries, "n": len(prompts)}


def retarget(examples: list[EditExample], model, tok, config: SampleConfig | None = None, progress: bool = True
             ) -> tuple[list[EditExample], dict]:
    """``examples`` (generation requests) with self-sampled targets, dropping those the model is certain about;
    cached on disk. Returns (examples, stats)."""
    cfg = config or SampleConfig()
    prompts = [e.prompt for e in examples]
    key = hashlib.sha256(json.dumps([_model_digest(model), prompts, cfg.__dict__]).encode()).hexdigest()[:16]
    path = cache_dir() / "selfsample" / f"{key}.json"
    if path.exists():
        blob = json.loads(path.read_text())
    else:
        targets, stats = sample_targets(model, tok, prompts, cfg, progress=progress)
        blob = {"targets": targets, "stats": stats}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(blob))
        tmp.replace(path)
    kept = [replace(e, target=t) for e, t in zip(examples, blob["targets"], strict=True) if t is not None]
    return kept, blob["stats"]
