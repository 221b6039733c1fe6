"""Exceptions that carry the fix. The CLI turns any EdgePromptError into one line on stderr and exit code 2."""

from __future__ import annotations


class EdgePromptError(Exception):
    """Base class: a problem the user can fix. The message says what to change."""


class ConfigError(EdgePromptError):
    """A bad option, unknown name, or inconsistent combination of settings."""


class DataError(EdgePromptError):
    """Unreadable images, empty classes, unknown labels, mismatched class lists."""


class MissingDependencyError(EdgePromptError):
    """An optional package is not installed; the message names the pip extra."""


class ArtifactError(EdgePromptError):
    """A run directory or bundle is missing files, or was written by an incompatible version."""


class ExportError(EdgePromptError):
    """Export or engine build failed, or the exported graph disagrees with torch."""
