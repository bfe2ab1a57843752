"""Errors a user can cause. Each message says what went wrong and what to do about it."""

__all__ = ["CutError", "DataError", "EdgesplitError", "InputShapeError", "ModelNotFoundError", "SplitArtifactError",
           "UntraceableModelError", "WeightsError"]


class EdgesplitError(Exception):
    """Base class: the CLI prints the message on one line and exits with code 2."""


class ModelNotFoundError(EdgesplitError):
    """An unknown zoo name or an import path that does not resolve to a model factory."""


class WeightsError(EdgesplitError):
    """A weights file that is missing, unreadable, or does not match the model."""


class InputShapeError(EdgesplitError):
    """An input shape that is malformed or that the model cannot run on."""


class UntraceableModelError(EdgesplitError):
    """A model that neither torch.fx nor torch.export can turn into a graph."""


class CutError(EdgesplitError):
    """A cut index or node name that does not name a candidate cut."""


class DataError(EdgesplitError):
    """A data set that is missing, malformed or corrupt."""


class SplitArtifactError(EdgesplitError):
    """A saved split (split.json + safetensors) that is missing, corrupt or does not match its model."""
