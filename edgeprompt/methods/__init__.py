"""Prompt-tuning methods behind a register / create / list registry.

>>> from edgeprompt.methods import list_methods, create_method
>>> list_methods()            # doctest: +SKIP
{'coop': '…', 'dspt': '…', 'nlprompt': '…', 'visprompt': '…', 'zeroshot': '…'}
"""

from edgeprompt.methods.base import (
    METHODS,
    FeatureBatch,
    PromptMethod,
    create_method,
    list_methods,
    method_config_class,
)

# importing the modules registers the methods
from edgeprompt.methods import coop as _coop  # noqa: E402,F401  isort: skip
from edgeprompt.methods import nlprompt as _nlprompt  # noqa: E402,F401  isort: skip
from edgeprompt.methods import zeroshot as _zeroshot  # noqa: E402,F401  isort: skip

try:  # VisPrompt lives in its own module; a missing one must not break the others
    from edgeprompt.methods import visprompt as _visprompt  # noqa: F401
except ImportError as _e:  # pragma: no cover
    if "visprompt" not in str(_e):
        raise

__all__ = ["METHODS", "FeatureBatch", "PromptMethod", "create_method", "list_methods", "method_config_class"]
