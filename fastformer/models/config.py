"""ModelConfig: one description for the three transformer families, filled from a Hugging Face
config.json by fastformer/hf/ (one adapter per model_type)."""
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    model_type: str  # the Hugging Face model_type it came from ("bert", "roberta", ...)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    attention_head_dim: int | None = None  # T5's d_kv where it is not hidden_size // num_heads (t5-3b: 1024 / 32 vs 128)
    activation: str = "gelu"  # a name in fastformer/nn/activation.py (gelu is erf, gelu_tanh the approximation)
    gated_ffn: bool = False  # T5 v1.1: act(x W_gate) * (x W_up)
    norm: str = "layer"  # layer | rms
    norm_eps: float = 1e-12
    pre_norm: bool = False  # False: BERT-style add & norm after each sublayer
    embedding_norm: bool = True  # LayerNorm right after the embeddings (BERT family)
    position: str = "learned"  # learned | sinusoidal | relative (T5) | none
    max_positions: int = 512  # rows of the position table (Hugging Face's max_position_embeddings)
    positions_from_padding: bool = False  # RoBERTa: position ids count from pad_token_id + 1
    type_vocab_size: int = 0  # BERT token types (0: none)
    pad_token_id: int | None = 0
    embedding_padding_idx: bool = True  # the word embedding's pad_token_id row gets no gradient (BERT); GPT-2: no
    bias: bool = True  # biases in the attention and feed-forward projections
    attention_scale: bool = True  # scale scores by 1/sqrt(head_dim) (T5 folds it into the weights)
    attention_scale_by_layer: bool = False  # GPT-2's scale_attn_by_inverse_layer_idx: layer i also divides by i + 1
    layer_norm_bias: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    num_labels: int = 2
    problem_type: str | None = None  # regression | single_label_classification | multi_label_classification
    id2label: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # family-specific facts the heads need

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_heads
