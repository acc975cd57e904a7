"""Kata Lab: runnable miniatures of system-design katas on real servers."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this package runs from; run directories and reports live under it."""

__all__ = ["REPO_ROOT"]
