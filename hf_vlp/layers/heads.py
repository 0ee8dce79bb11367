"""Output heads shared across architectures: pooler, masked-LM head, the GELU-LayerNorm MLP classifier."""

import torch
from torch import nn
from transformers.activations import ACT2FN


class Pooler(nn.Module):
    """tanh(dense(hidden state of the first token))."""

    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class PredictionHeadTransform(nn.Module):
    """dense -> activation -> LayerNorm (BERT `cls.predictions.transform`)."""

    def __init__(self, hidden_size, hidden_act="gelu", layer_norm_eps=1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.transform_act_fn = ACT2FN[hidden_act]
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class MaskedLMHead(nn.Module):
    """BERT's MLM head: transform, then the vocabulary decoder (keys `transform.*`, `decoder.weight`, `decoder.bias`).

    `decoder.weight` is tied to the word embeddings by the model's `_tied_weights_keys`. The output bias is the
    decoder's own bias (as in transformers' ViLT head), so `resize_token_embeddings`, which rebuilds
    `get_output_embeddings()` (the decoder), resizes weight and bias together and the result saves and reloads;
    `bias` names the same parameter (BERT checkpoints call it `cls.predictions.bias`; converters map it to
    `decoder.bias`).
    """

    def __init__(self, hidden_size, vocab_size, hidden_act="gelu", layer_norm_eps=1e-12):
        super().__init__()
        self.transform = PredictionHeadTransform(hidden_size, hidden_act, layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.decoder.bias = nn.Parameter(torch.zeros(vocab_size))  # zeros, as BERT starts its output bias

    @property
    def bias(self):
        return self.decoder.bias

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


def mlp_classifier(input_size, hidden_size, output_size, layer_norm_eps=1e-12, activation="gelu"):
    """Linear -> activation -> LayerNorm -> Linear: the answer / region / referring heads of UNITER, LXMERT,
    VilBERT and Oscar. A `Sequential`, so state-dict keys are `0.*`, `2.*`, `3.*` as in those checkpoints."""
    return nn.Sequential(
        nn.Linear(input_size, hidden_size),
        ACT2FN[activation],
        nn.LayerNorm(hidden_size, eps=layer_norm_eps),
        nn.Linear(hidden_size, output_size),
    )
