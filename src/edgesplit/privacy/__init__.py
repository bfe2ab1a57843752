"""What the features at a cut reveal about the private input: metrics, attacks, defenses, and the audit.

``metrics`` (PSNR, SSIM, distance correlation, confidence intervals), ``inversion`` (learned and optimization
feature inversion), ``probes`` (label probes on features), ``defenses`` (noise, dropout, coarser quantization,
NoPeek, bottlenecks), ``audit`` (all of them per cut and defense), ``report`` (its JSON), ``leakage`` (the
per-cut table the planner bounds).
"""

from edgesplit.privacy.leakage import CutLeakage, LeakageTable, load_leakage

__all__ = ["CutLeakage", "LeakageTable", "load_leakage"]
