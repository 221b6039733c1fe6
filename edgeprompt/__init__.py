"""edgeprompt: noise-robust prompt tuning for a frozen CLIP, exported for the edge.

Importing the package is cheap and torch-free; heavy stages are imported by the functions that use them.
"""

from edgeprompt.version import __version__

__all__ = ["__version__"]
