"""Tiny random T5 (v1.0 and gated v1.1), BART and Marian checkpoints saved with transformers' save_pretrained,
shared by the model and the text2text tests."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB = 99
FAMILIES = {  # name -> (config class, config kwargs, model class)
    # 8 buckets reaching 20 tokens: the sequences below use the exact and the logarithmic buckets.
    "t5": ("T5Config", dict(vocab_size=VOCAB, d_model=64, d_kv=32, d_ff=37, num_layers=2,
                            num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                            dropout_rate=0.0, decoder_start_token_id=0), "T5ForConditionalGeneration"),
    # v1.1: gated tanh-GELU, untied head, inner attention width (2 x 32) != d_model (48).
    "t5-gated": ("T5Config", dict(vocab_size=VOCAB, d_model=48, d_kv=32, d_ff=37, num_layers=2, num_heads=2,
                                  relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                  feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                                  decoder_start_token_id=0), "T5ForConditionalGeneration"),
    "bart": ("BartConfig", dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                                decoder_ffn_dim=41, max_position_embeddings=40, dropout=0.0, pad_token_id=1,
                                bos_token_id=0, eos_token_id=2, decoder_start_token_id=2),
             "BartForConditionalGeneration"),
    "marian": ("MarianConfig", dict(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                                    decoder_ffn_dim=37, max_position_embeddings=40, activation_function="swish",
                                    scale_embedding=True, dropout=0.0, pad_token_id=VOCAB - 1, eos_token_id=0,
                                    decoder_start_token_id=VOCAB - 1, forced_eos_token_id=0),
               "MarianMTModel"),
}


def save_tiny(tmp_path, family: str, **overrides):
    config_cls, kwargs, model_cls = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**kwargs, **overrides})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # fresh values for what HF initializes to constants (norms, biases, final_logits_bias)
        for p in model.parameters():
            if p.requires_grad:  # not Marian's fixed sinusoidal tables, which are not saved
                p.add_(0.05 * torch.randn_like(p))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.add_(0.5 * torch.randn_like(model.final_logits_bias))
    path = tmp_path / family
    model.save_pretrained(path)
    return model, path


def source_batch(family: str, padded: bool, lengths=(13, 7, 1)):
    pad = FAMILIES[family][1].get("pad_token_id", 0)
    seq = max(lengths)
    ids = torch.randint(3, VOCAB - 1, (len(lengths), seq))
    mask = torch.ones(len(lengths), seq, dtype=torch.long)
    if padded:
        for row, length in enumerate(lengths):
            ids[row, length:] = pad
            mask[row, length:] = 0
    return ids, mask


def save_tokenizer(path, pad: int, eos: int, unk: int):
    """A whitespace word-level tokenizer over the model's vocabulary that appends EOS, saved into the
    checkpoint folder so AutoTokenizer finds it there."""
    names = {pad: "<pad>", eos: "</s>", unk: "<unk>"}
    prompt_words = iter(["translate", "English", "to", "German:", "summarize:"])
    vocab = {}
    for i in range(VOCAB):
        vocab[names.get(i) or (next(prompt_words, None) if i > 60 else None) or f"w{i}"] = i
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(path)
    return fast
