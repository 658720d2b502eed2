"""Tiny random GPT-2 checkpoints saved with save_pretrained (no network), shared by the GPT-2 model
and generation tests."""
import torch

TINY_GPT2 = dict(vocab_size=97, n_embd=64, n_layer=2, n_head=2, n_positions=48, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, summary_first_dropout=0.0, bos_token_id=1, eos_token_id=2)


def save_tiny_gpt2(path, head: str = "LMHeadModel", noise: float = 0.02, **overrides):
    """A transformers GPT2<head> with fresh values in every parameter, saved to path. Returns it (eval)."""
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, "GPT2" + head)(transformers.GPT2Config(**{**TINY_GPT2, **overrides})).eval()
    with torch.no_grad():  # LayerNorms and biases start as constants in transformers
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def save_word_tokenizer(path, vocab_size: int = TINY_GPT2["vocab_size"]):
    """A whitespace word-level tokenizer over ids 0 .. vocab_size - 1 (w4 .. w<vocab_size - 1>; EOS 2, no pad
    token, as GPT-2's; TINY_GPT2's vocabulary by default), saved into path so AutoTokenizer finds it there.
    Returns it."""
    import tokenizers
    import transformers

    vocab = {"<unk>": 0, "<pad>": 3, "<bos>": 1, "<eos>": 2}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>",
                                                     eos_token="<eos>", bos_token="<bos>")
    tokenizer.save_pretrained(path)
    return tokenizer


def left_padded_prompts(lengths, seq: int, pad: int = 0, low: int = 3, high: int = 97):
    """input_ids [B, seq] with row b's prompt in its last lengths[b] slots, and the attention mask."""
    ids = torch.randint(low, high, (len(lengths), seq))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, seq - length:] = 1
    return ids.masked_fill(mask == 0, pad), mask
