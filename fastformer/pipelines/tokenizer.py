"""load_tokenizer: the Hugging Face tokenizer saved in a checkpoint folder, or an error saying it is not there."""
import os

# The files a transformers tokenizer is built from: the fast tokenizer's single file, WordPiece (BERT),
# byte-level BPE (GPT-2, RoBERTa, BART), SentencePiece (T5, Marian, XLM-R, Llama).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "source.spm",
                   "sentencepiece.bpe.model", "tokenizer.model")


def load_tokenizer(path, padding_side: str = "right"):
    """AutoTokenizer.from_pretrained(path) for a local folder (no network). Without any of TOKENIZER_FILES,
    transformers builds a tokenizer with an empty vocabulary that turns every text into no tokens; this
    raises a ValueError naming the folder and the files looked for instead."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ValueError(f"{path} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} is in the folder; save "
                         "the checkpoint's tokenizer there (tokenizer.save_pretrained(path))")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    return tokenizer
