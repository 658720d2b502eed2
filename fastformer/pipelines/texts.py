"""check_texts: the one validation of "a string or a list of strings" that every pipeline takes."""


def check_texts(texts, name: str = "texts") -> list[str]:
    """texts as a non-empty list of non-blank strings; TypeError / ValueError naming the bad entry."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a string or a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} is empty: pass at least one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty")
    return list(texts)


class InputTooLong(ValueError):
    """An input with more tokens than the model takes; `limit` is that number (servers answer 413 with it)."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit
