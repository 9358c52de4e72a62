"""Tests for smobility (trial). Run them with C{make test} or C{tools/runtests.py}."""

from __future__ import annotations
