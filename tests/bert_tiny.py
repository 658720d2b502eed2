"""Tiny random BERT checkpoints with a WordPiece tokenizer over words w5..w98, saved with save_pretrained
(no network), shared by the pipeline and serving tests."""
import torch

WORDS = [f"w{i}" for i in range(5, 99)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_BERT = dict(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=37, max_position_embeddings=40, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, type_vocab_size=2)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def save_tiny_bert(path, head: str = "ForSequenceClassification", tokenizer: bool = True, **overrides):
    """A transformers Bert<head> with fresh values in every parameter (and id2label LABELS), saved to path
    with its tokenizer (vocab.txt, tokenizer.json) unless tokenizer=False. Returns the model (eval)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(**{**TINY_BERT, "id2label": LABELS, **overrides})
    model = getattr(transformers, "Bert" + head)(config).eval()
    with torch.no_grad():  # LayerNorms and biases start as constants in transformers
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    if tokenizer:
        vocab = path / "vocab.txt"
        vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
        transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=False).save_pretrained(path)
    return model
