"""Exceptions of the ``ai`` package.

::

    AIError
     +-- NotALungCT          the volume holds no lungs to segment

Bad arguments raise the built-in ``ValueError``/``TypeError`` (as highdicom
does); these classes are for inputs that are well formed but unusable.
"""

from __future__ import annotations

__all__ = ["AIError", "NotALungCT"]


class AIError(Exception):
    """Base class of every error raised by the ``ai`` package."""


class NotALungCT(AIError):
    """The volume has no internal air region that could be lungs."""
