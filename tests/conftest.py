"""Shared fixtures: micro models of each kind, trained for a few steps on a micro world (seconds, no zoo)."""

import pytest
import torch

from mendlab import zoo
from mendlab.world import WorldConfig

MICRO_WORLD = WorldConfig(n_subjects=20)
MICRO_SPECS = {
    "gpt2": zoo.ZooSpec("micro-gpt2", "gpt2", dict(n_layer=2, n_embd=32, n_head=2, n_positions=128), steps=3,
                        batch_size=8, world=MICRO_WORLD),
    "gpt_neo": zoo.ZooSpec("micro-gptneo", "gpt_neo", dict(num_layers=2, hidden_size=32, num_heads=2,
                                                          attention_types=[[["global", "local"], 1]],
                                                          window_size=16, max_position_embeddings=128),
                           steps=3, batch_size=8, world=MICRO_WORLD),
    "bart": zoo.ZooSpec("micro-bart", "bart", dict(encoder_layers=2, decoder_layers=2, d_model=32, encoder_ffn_dim=64,
                                                   decoder_ffn_dim=64, encoder_attention_heads=2,
                                                   decoder_attention_heads=2, max_position_embeddings=128),
                        steps=3, batch_size=8, world=MICRO_WORLD),
    "t5": zoo.ZooSpec("micro-t5", "t5", dict(num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=2,
                                             d_kv=16, feed_forward_proj="gated-gelu"), steps=3, batch_size=8,
                      world=MICRO_WORLD),
    "bert": zoo.ZooSpec("micro-bert", "bert", dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=2,
                                                   intermediate_size=64, max_position_embeddings=128, num_labels=1),
                        steps=3, batch_size=8, world=MICRO_WORLD),
}
_built: dict = {}

# One thread per process: `make test` runs two pytest workers on a 2-core machine, and the zoo models the
# notebooks' recorded outputs come from are built at one thread (builds differ in rounding across thread counts).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state, whichever worker runs it and in whatever order."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def micro():
    """``micro(model_type) -> (model, tokenizer, world)``, built once per session."""
    from mendlab.world import World

    def get(model_type: str):
        if model_type not in _built:
            torch.manual_seed(0)
            model, tok, _ = zoo.train_model(MICRO_SPECS[model_type], progress=False)
            _built[model_type] = (model.eval(), tok, World(MICRO_WORLD))
        return _built[model_type]

    return get
