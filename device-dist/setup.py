"""Builds edgesplit-device from ../src: only the modules listed here, copied to build/src first, so that nothing
that imports torch is shipped (tests/test_device_client.py builds the wheel and imports every module of it with
``import torch`` blocked)."""

import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src"
STAGE = HERE / "build" / "src"

# What `python -m edgesplit.device` imports, and nothing else. The package __init__ files import their names lazily
# (a name whose module is not shipped raises ModuleNotFoundError when asked for).
MODULES = [
    "edgesplit/__init__.py", "edgesplit/errors.py", "edgesplit/versioned.py",
    "edgesplit/codecs/__init__.py", "edgesplit/codecs/grammar.py", "edgesplit/codecs/layout.py",
    "edgesplit/codecs/quantize.py", "edgesplit/codecs/entropy.py",
    "edgesplit/device/__init__.py", "edgesplit/device/__main__.py", "edgesplit/device/bundle.py",
    "edgesplit/device/client.py", "edgesplit/device/codecs.py",
    "edgesplit/runtime/__init__.py", "edgesplit/runtime/adapt.py", "edgesplit/runtime/auth.py",
    "edgesplit/runtime/errors.py", "edgesplit/runtime/summary.py", "edgesplit/runtime/transport.py",
    "edgesplit/runtime/wire.py",
]
PACKAGES = sorted({str(Path(m).parent).replace("/", ".") for m in MODULES})


def _stage() -> None:
    if not SOURCE.is_dir():  # building from an sdist: build/src was staged when it was made
        return
    shutil.rmtree(STAGE, ignore_errors=True)
    for module in MODULES:
        target = STAGE / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SOURCE / module, target)


_stage()
setup(package_dir={"": "build/src"}, packages=PACKAGES)
