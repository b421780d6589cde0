"""The CUDA path: a tiny editor trained a few steps on a GPU with the base model in bf16, then an edit, and a
model spread over two GPUs by a device map. Skipped without CUDA (``-m gpu`` selects these tests)."""

from __future__ import annotations

import pytest
import torch

from mendlab import tasks
from mendlab.editors import MEND
from mendlab.nets import NetConfig
from mendlab.train import TrainConfig, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cuda_copy(micro, dtype=torch.bfloat16):
    """A copy of the micro GPT-2 on the GPU in ``dtype`` (the session's CPU model stays as it is)."""
    model, tok, world = micro("gpt2")
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return copy.to("cuda", dtype).eval(), tok, world


def test_a_tiny_editor_trains_on_cuda_with_a_bf16_model_and_edits(micro):
    model, tok, world = _cuda_copy(micro)
    t = tasks.from_world(world, "decoder")
    torch.manual_seed(0)
    editor = MEND.for_model(model, NetConfig(rank=16))  # fp32 editor, bf16 model
    cfg = TrainConfig(steps=6, edits_per_step=4, val_every=3, val_size=4, lr=1e-3, device="cuda", dtype="bf16")
    result = train(editor, model, tok, t.train, t.val, cfg, progress=False)
    assert result.skipped == 0 and result.best_val < float("inf")
    assert next(editor.parameters()).device.type == "cuda" and next(editor.parameters()).dtype == torch.float32
    edit = editor.edit(model, tok, t.test[:2])
    assert all(f.delta.device.type == "cuda" for f in edit.factors.values())
    logits = edit.forward(model, {k: v.cuda() for k, v in editor_batch(model, tok, t.test[:2]).items()})
    assert torch.isfinite(logits.float()).all()


def editor_batch(model, tok, examples):
    from mendlab.data import Collator

    return Collator.for_model(model, tok)(examples).edit_outer


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_an_edit_of_a_model_spread_over_two_gpus(micro, tmp_path):
    pytest.importorskip("accelerate")
    from mendlab import zoo

    model, tok, world = micro("gpt2")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    blocks = model.config.n_layer
    device_map = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.drop": 0, "transformer.ln_f": 1,
                  "lm_head": 1, **{f"transformer.h.{i}": int(i >= blocks // 2) for i in range(blocks)}}
    spread, tok = zoo.load(str(tmp_path / "m"), device_map=device_map)
    editor = MEND.for_model(spread, NetConfig(rank=16, norm=False)).to("cuda:0").eval()
    t = tasks.from_world(world, "decoder")
    edit = editor.edit(spread, tok, t.test[:2])
    devices = {f.delta.device for f in edit.factors.values()}
    assert devices == {torch.device("cuda", 0), torch.device("cuda", 1)}  # each factor on its own layer's GPU
    assert torch.isfinite(edit.forward(spread, editor_batch(spread, tok, t.test[:2])).float()).all()
