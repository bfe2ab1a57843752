"""What the features at a cut reveal about the private input: leakage tables (attacks come with the audit)."""

from .leakage import CutLeakage, LeakageTable, load_leakage

__all__ = ["CutLeakage", "LeakageTable", "load_leakage"]
