"""What the features at a cut reveal about the private input: metrics, attacks, defenses, and the audit.

Modules, lower first (each imports only those above it):

- ``metrics``: PSNR, SSIM, distance correlation, confidence intervals.
- ``query``: what the server receives when the device's head is queried (head, then the wire's transform).
- ``decoders``: the learned attack's decoders (conv, fully connected, token), chosen from the cut's shapes.
- ``inversion``: learned (black-box) and optimization (white-box) feature inversion.
- ``probes``: label probes trained on auxiliary features.
- ``defended``: the defended cut (head, transform on the way, tail) and the transforms defenses are made of.
- ``trained``: defenses trained with the model (``trained:`` specs): head and tail fine-tuned under the defense.
- ``defenses``: the defense specs (noise, dropout, coarser quantization, NoPeek, bottlenecks, ``trained:``) and
  :func:`build_defense`.
- ``attacks``: the table of attacks the audit can run; a new attack is one row there.
- ``fisher``: the bound beside the attacks: dFIL, the Fisher information the features carry about the input.
- ``schema``: the audit's JSON (:class:`AuditReport`).
- ``leakage``: the per-cut leakage table the audit writes for the planner (schema: `edgesplit.plan.leakage`).
- ``figures``: the audit's PNGs (reconstruction grids, leakage by cut, privacy against utility).
- ``audit``: every attack at every cut under every defense (:func:`run_audit`, :class:`AuditSettings`).
"""

from edgesplit.plan.leakage import CutLeakage, LeakageTable, load_leakage
from edgesplit.privacy.attacks import ATTACKS, Attack, parse_attacks
from edgesplit.privacy.audit import AuditSettings, resolve_cuts, run_audit, summary_line
from edgesplit.privacy.defenses import DefendedCut, DefenseSpec, build_defense, parse_defense, parse_defenses
from edgesplit.privacy.fisher import FisherResult, dfil
from edgesplit.privacy.inversion import InversionResult, learned_inversion, optimization_inversion
from edgesplit.privacy.leakage import leakage_table
from edgesplit.privacy.metrics import distance_correlation, psnr, ssim
from edgesplit.privacy.probes import ProbeResult, probe_accuracy
from edgesplit.privacy.query import codec_transform
from edgesplit.privacy.schema import AuditReport, load_audit
from edgesplit.privacy.trained import TrainedSpec, build_trained, parse_trained

__all__ = ["ATTACKS", "Attack", "AuditReport", "AuditSettings", "CutLeakage", "DefendedCut", "DefenseSpec",
           "FisherResult", "InversionResult", "LeakageTable", "ProbeResult", "build_defense", "codec_transform",
           "dfil", "distance_correlation", "leakage_table", "learned_inversion", "load_audit", "load_leakage",
           "optimization_inversion", "parse_attacks", "parse_defense", "parse_defenses", "probe_accuracy", "psnr",
           "resolve_cuts", "run_audit", "ssim", "summary_line", "TrainedSpec", "build_trained", "parse_trained"]
