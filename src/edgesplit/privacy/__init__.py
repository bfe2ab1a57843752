"""What the features at a cut reveal about the private input: metrics, attacks, and the leakage table.

``metrics`` (PSNR, SSIM, distance correlation, confidence intervals), ``inversion`` (learned and optimization
feature inversion), ``probes`` (label probes on features); the audit that runs them per cut is still to come.
"""

from .leakage import CutLeakage, LeakageTable, load_leakage

__all__ = ["CutLeakage", "LeakageTable", "load_leakage"]
