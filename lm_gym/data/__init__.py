"""Data sets for lm-gym tasks: offline built-ins, online ``datasets`` loaders, and user files.

Every data set yields :class:`Sample` objects (prompt, references, meta) for a split in
:data:`SPLITS`::

    from lm_gym.data import load_dataset, list_datasets

    samples = load_dataset("movie-reviews", split="train")
    samples = load_dataset("my_data.jsonl", split="validation")       # {"prompt": ..., "references": [...]}
    samples = load_dataset([{"prompt": "Hello", "references": ["Hallo"]}])
    samples = load_dataset("imdb", split="test", path="imdb_saved/")  # a save_to_disk folder

Built-in offline data sets (see :mod:`lm_gym.data.builtin`): ``movie-reviews``,
``django-en-{de,es,fr,it,ja,nl,pl,pt,ru}``, ``stdlib-docstrings``, ``wiki-leads``; dialogues
(see :mod:`lm_gym.data.dialogue`): ``chatterbot-{en,de,es,...}`` offline, ``daily_dialog`` online.
Online data sets through Hugging Face ``datasets`` (see :mod:`lm_gym.data.online`): ``imdb``,
``wmt16-de-en``, ``iwslt2017-en-de``, ``cnn_dailymail``, ``xsum``.

Importing this package is light: no torch, ``datasets`` or gensim import happens until a loader runs.
"""

from lm_gym.data import builtin as _builtin  # noqa: F401  (registers the built-in data sets)
from lm_gym.data import dialogue as _dialogue  # noqa: F401  (registers the dialogue data sets)
from lm_gym.data import online as _online  # noqa: F401  (registers the online data sets)
from lm_gym.data.base import SPLITS, Loader, Sample
from lm_gym.data.cache import cache_dir, clear_memo
from lm_gym.data.registry import dataset_info, list_datasets, load_dataset, register_dataset
from lm_gym.data.splits import split_of

__all__ = [
    "SPLITS",
    "Loader",
    "Sample",
    "cache_dir",
    "clear_memo",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "split_of",
]
