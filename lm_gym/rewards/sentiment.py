"""Sentiment rewards: the VADER lexicon (offline, no model) and any Hugging Face classifier.

Both score the probability-like "how positive is this text" in ``[0, 1]``. VADER is English-only
and rule-based; a fine-tuned classifier (for example an SST-2 or IMDB model) is the stronger
reward when the hub or a local copy is available.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_gym.models import resolve_device
from lm_gym.rewards import _hf
from lm_gym.rewards.base import Scorer, batched

#: The classifier used when no ``model=`` is given (needs the Hugging Face hub or its cache).
DEFAULT_CLASSIFIER = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"


class VaderSentimentScorer(Scorer):
    """VADER compound polarity mapped to ``[0, 1]`` as ``(compound + 1) / 2`` (registered as
    ``"sentiment"`` and ``"sentiment-vader"``).

    ``0.5`` is neutral (and is the score of an empty text), above is positive. The lexicon ships
    with the ``vaderSentiment`` package, so this reward works offline. One analyzer is built per
    scorer.
    """

    name = "sentiment-vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        return [(self._analyzer.polarity_scores(t)["compound"] + 1.0) / 2.0 for t in texts]


class ClassifierScorer(Scorer):
    """Probability of one label under a Hugging Face sequence classifier (registered as
    ``"sentiment-classifier"``).

    The model is any ``AutoModelForSequenceClassification`` (hub id or local folder) with its
    tokenizer. Texts are scored in batches under ``torch.no_grad``; the score is the softmax
    probability of ``label`` (the sigmoid of the single logit for one-output models). Batching
    pads texts together, so the score of a text can differ between batches in the last float
    digits (about 1e-7).

    :param model: a hub id or a local folder holding the model and its tokenizer.
    :param label: the label whose probability is the score: a label name (matched exactly, then
        ignoring case) or an index. ``None`` picks ``"POSITIVE"`` when the model has such a label
        and index 1 otherwise (index 0 for a one-output model).
    :param batch_size: texts per forward pass.
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, or ``"auto"``.
    :param max_length: tokens kept per text (truncation), capped by the model's positions.
    :raises ValueError: if ``label`` is not one of the model's labels.
    """

    name = "sentiment-classifier"
    shareable = True

    def __init__(
        self,
        model: str | Path = DEFAULT_CLASSIFIER,
        label: str | int | None = None,
        batch_size: int = 32,
        device: Any = "cpu",
        max_length: int = 512,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.model_name = str(model)
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.tokenizer = _hf.load_pretrained(AutoTokenizer, model, "classifier tokenizer")
        self.model = _hf.load_pretrained(AutoModelForSequenceClassification, model, "classifier")
        self.model.to(self.device).eval()
        config = self.model.config
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(
                    f"the tokenizer of {self.model_name!r} has neither a pad nor an eos token; "
                    "set tokenizer.pad_token and save it again."
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = _hf.max_positions(config, max_length)
        self.labels: list[str] = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.label_index = self._resolve_label(label)
        self.label = self.labels[self.label_index]
        # tokenizers without special tokens (GPT-2) turn "" into zero tokens: score eos instead
        empty_ids = self.tokenizer("")["input_ids"]
        self._empty_text = "" if len(empty_ids) else self.tokenizer.pad_token

    def _resolve_label(self, label: str | int | None) -> int:
        labels = self.labels
        known = ", ".join(f"{i}: {name!r}" for i, name in enumerate(labels))
        if label is None:
            upper = [name.upper() for name in labels]
            if "POSITIVE" in upper:
                return upper.index("POSITIVE")
            return 1 if len(labels) > 1 else 0
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise TypeError(f"label must be a label name or index, got {label!r}.")
        if isinstance(label, int):
            if 0 <= label < len(labels):
                return label
            raise ValueError(
                f"label index {label} is out of range for {self.model_name!r}; "
                f"its labels are {{{known}}}."
            )
        if label in labels:
            return labels.index(label)
        folded = [name.casefold() for name in labels]
        if label.casefold() in folded:
            return folded.index(label.casefold())
        raise ValueError(
            f"label {label!r} is not a label of {self.model_name!r}; its labels are {{{known}}}."
        )

    def _score(
        self,
        texts: list[str],
        prompts: list[str] | None,
        references: list[tuple[str, ...]] | None,
    ) -> list[float]:
        import torch

        inputs = [t if t else self._empty_text for t in texts]
        # group texts of similar length to waste less compute on padding
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        scores = [0.0] * len(inputs)
        with torch.no_grad():
            for idx in batched(order, self.batch_size):
                enc = self.tokenizer(
                    [inputs[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**enc).logits.float()
                if logits.shape[-1] == 1:
                    probs = torch.sigmoid(logits[:, 0])
                else:
                    probs = torch.softmax(logits, dim=-1)[:, self.label_index]
                for i, p in zip(idx, probs.tolist()):
                    scores[i] = p
        return scores

    def __repr__(self) -> str:
        return f"ClassifierScorer(model={self.model_name!r}, label={self.label!r})"


__all__ = ["DEFAULT_CLASSIFIER", "ClassifierScorer", "VaderSentimentScorer"]
