"""The model: tracing to a graph of cuts, the zoo, loading a user's model safely, saved splits, data and training.

The modules, lower first:

* ``zoo``: the built-in models by name (``ZOO``); ``limits``: the sizes a loaded model and its input may have.
* ``hf``: ``hf:DIR``, a Hugging Face ``save_pretrained`` folder, loaded offline and wrapped to return one tensor.
* ``intake``: a model named by a zoo name, ``module:factory`` or ``hf:DIR`` (``ModelRef``), built and its weights read
  safely.
* ``graph``: ``trace`` turns a model into a ``TracedModel``, its candidate cuts and the split at any of them.
* ``artifact``: a split saved as split.json and safetensors, and loaded back (``save_split``, ``load_split``).
* ``data``: data sets named by spec strings (``load_dataset``); ``train``: `edgesplit train`.
"""

from edgesplit.model.artifact import load_split, save_split
from edgesplit.model.data import Dataset, load_dataset
from edgesplit.model.graph import Cut, Split, TracedModel, trace
from edgesplit.model.intake import ModelRef, load_model
from edgesplit.model.zoo import ZOO

__all__ = ["ZOO", "Cut", "Dataset", "ModelRef", "Split", "TracedModel", "load_dataset", "load_model", "load_split",
           "save_split", "trace"]
