"""What crosses the cut, and what sending less costs in accuracy (`edgesplit compress`).

The codecs themselves are ``edgesplit.codecs``; this package measures and learns around them:

* ``pictures``: images as PNG, JPEG or WebP bytes, what a device may send instead of features.
* ``bottleneck``: a learned bottleneck at a cut (encoder on the device, decoder on the server), slimmable to
  several widths; its code travels in an ``intB+ans`` codec.
* ``rate``: rate against accuracy at one cut, every codec and bottleneck width measured end to end
  (:func:`compress`, its file :class:`CompressReport`).
* ``payload``: what a codec or an input format sends and how long it takes here, as the planner costs it.
"""

from edgesplit.compress.bottleneck import BottleneckConfig, SlimmableBottleneck, TrainingPlan
from edgesplit.compress.rate import CompressReport, compress, load_compress

__all__ = ["BottleneckConfig", "CompressReport", "SlimmableBottleneck", "TrainingPlan", "compress", "load_compress"]
