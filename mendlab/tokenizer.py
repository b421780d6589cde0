"""The zoo's tokenizer: a byte-level BPE trained on the world's text, so that every world word is one token."""

from __future__ import annotations

from mendlab.world import World

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, BART's order
BOS, PAD, EOS = 0, 1, 2


def build_tokenizer(world: World, vocab_size: int, kind: str):
    """A byte-level BPE trained on the world, wrapped as ``PreTrainedTokenizerFast``.

    ``kind`` sets the special tokens the tokenizer adds, as the real checkpoints' tokenizers do: none for
    decoders (GPT-2), ``<s> … </s>`` for BART and BERT-style classifiers, ``… </s>`` for T5.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(world.corpus(), trainer)
    template = {"decoder": None, "seq2seq_t5": "$A </s>", "seq2seq": "<s> $A </s>", "classifier": "<s> $A </s>"}
    single = template[kind]
    if single:
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=single + " $B </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
