"""astrojax: differentiable neuron--astrocyte networks that compute self-attention."""
from .dynamics import NeuronAstrocyteParams, State, vector_field
from .features import (
    AbstractFeatureMap,
    CosineFeatures,
    LearnedExpFeatures,
    PerformerFeatures,
    SaturatingFeatures,
    make_feature_map,
)
from .integrate import DiffraxPath, FastPath, Readout, Trace, integrate
from .oracles import leaky_random_feature_attention, random_feature_attention, softmax_attention
from .protocol import Protocol
