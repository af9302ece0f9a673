"""lenslib's errors: one base class, so ``except lenslib.LenslibError`` catches all of them.

Each specific error also derives from the built-in exception a caller would expect
(``ValueError`` for bad input, ``RuntimeError`` for what the machine lacks), so existing
``except ValueError`` code keeps working.

>>> import lenslib
>>> issubclass(lenslib.LensMismatchError, lenslib.LenslibError), issubclass(lenslib.LensMismatchError, ValueError)
(True, True)
"""


class LenslibError(Exception):
    """Base class of every error lenslib raises on purpose; the message says what to do."""


class InputError(LenslibError, ValueError):
    """An argument that lenslib cannot use: a bad prompt, token, position, size or option."""


class ModelNotAvailableError(LenslibError, RuntimeError):
    """A model cannot be loaded here; the message says what to do instead."""


class LensMismatchError(LenslibError, ValueError):
    """Translators were made for another model, shape or set of layers."""


class CorpusNotAvailableError(LenslibError, RuntimeError):
    """The fitting text (Debian's ``fortunes``) is not installed."""


class NotEnoughTextError(LenslibError, ValueError):
    """Too little text to fit or score a tuned lens."""


class KernelBuildError(LenslibError, RuntimeError):
    """The C kernel could not be compiled; the lens falls back to torch."""
