"""Softmax transformer teachers: BERT-family encoders from HF directories (MiniLM by
default), a small ViT trained here on scikit-learn's digits, and a small decoder-only
character language model (GPT) trained here on the offline prose corpus.

Every teacher is an :class:`AbstractEncoder` whose ``run(inputs)`` returns a
:class:`TeacherOutput` (hidden states of every layer; per-head q, k, v, attention
weights, softmax normalisers Z and head outputs). :func:`to_neuron_astrocyte` builds the
student: the same model with its attention layers replaced by neuron--astrocyte layers
(projections copied from the teacher).
"""
from ._common import (
    AbstractEncoder,
    TeacherError,
    TeacherOutput,
    load_model,
    read_header,
    save_model,
    to_neuron_astrocyte,
)
from ._bert import MINILM_INSTALL, BertConfig, BertEncoder, TextTokenizer, load_hf_teacher, mean_pool, minilm_path
from ._vit import (
    DigitsViT,
    ViTConfig,
    default_digits_path,
    digits_cache_path,
    digits_recipe,
    digits_data,
    evaluate_digits_vit,
    load_digits_vit,
    save_digits_vit,
    train_digits_vit,
)
from ._gpt import (
    GPT,
    CharTokenizer,
    GPTConfig,
    GPTTrainConfig,
    evaluate_gpt,
    generate,
    generate_text,
    gpt_cache_path,
    gpt_data,
    gpt_teacher,
    load_gpt,
    save_gpt,
    train_gpt_teacher,
)
from ._load import TEACHER_NAMES, Teacher, default_text, load_teacher

__all__ = [
    "AbstractEncoder",
    "TeacherError",
    "TeacherOutput",
    "to_neuron_astrocyte",
    "save_model",
    "load_model",
    "read_header",
    "BertConfig",
    "BertEncoder",
    "TextTokenizer",
    "mean_pool",
    "load_hf_teacher",
    "minilm_path",
    "MINILM_INSTALL",
    "DigitsViT",
    "ViTConfig",
    "default_digits_path",
    "digits_cache_path",
    "digits_recipe",
    "digits_data",
    "evaluate_digits_vit",
    "load_digits_vit",
    "save_digits_vit",
    "train_digits_vit",
    "GPT",
    "CharTokenizer",
    "GPTConfig",
    "GPTTrainConfig",
    "evaluate_gpt",
    "generate",
    "generate_text",
    "gpt_cache_path",
    "gpt_data",
    "gpt_teacher",
    "load_gpt",
    "save_gpt",
    "train_gpt_teacher",
    "Teacher",
    "TEACHER_NAMES",
    "load_teacher",
    "default_text",
]
