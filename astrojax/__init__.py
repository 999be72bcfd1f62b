"""astrojax: differentiable neuron--astrocyte networks that compute self-attention."""
from .dynamics import NeuronAstrocyteParams, State, vector_field
from .features import (
    AbstractFeatureMap,
    CosineFeatures,
    DendriticExpFeatures,
    LearnedExpFeatures,
    PerformerFeatures,
    SaturatingFeatures,
    make_feature_map,
)
from .integrate import RESULTS, AbstractMethod, Carry, DiffraxPath, FastPath, Readout, SaveAt, Solution, Trace, integrate, solve
from .oracles import leaky_random_feature_attention, random_feature_attention, softmax_attention
from .protocol import Protocol
from .simulate import simulate_attention
from .layers import NeuronAstrocyteAttention, TransformerBlock, TransformerStack

__all__ = [
    "simulate_attention",
    "softmax_attention",
    "random_feature_attention",
    "leaky_random_feature_attention",
    "NeuronAstrocyteParams",
    "State",
    "vector_field",
    "Protocol",
    "FastPath",
    "DiffraxPath",
    "Readout",
    "Trace",
    "integrate",
    "solve",
    "SaveAt",
    "Solution",
    "Carry",
    "RESULTS",
    "AbstractMethod",
    "AbstractFeatureMap",
    "PerformerFeatures",
    "SaturatingFeatures",
    "CosineFeatures",
    "LearnedExpFeatures",
    "DendriticExpFeatures",
    "make_feature_map",
    "NeuronAstrocyteAttention",
    "TransformerBlock",
    "TransformerStack",
]
__version__ = "0.1.0"
