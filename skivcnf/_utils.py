"""The estimator's device and its named random streams."""

import functools
import sys
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state

__all__ = ["STREAMS", "RandomStreams", "caller_stacklevel", "one_warning_per_kind", "resolve_device"]


def resolve_device(device, fall_back_to_cpu=False):
    """The ``torch.device`` that ``device`` names.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    fall_back_to_cpu : bool, default=False
        What to do when a GPU is named and CUDA is not available: raise a ValueError (when
        fitting: the user asked for a GPU), or warn and use the CPU (when loading an imputer
        that was fitted on a GPU, so that it still runs on a machine without one).

    Returns
    -------
    torch.device

    Examples
    --------
    >>> from skivcnf._utils import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
        ...
    ValueError: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        if not fall_back_to_cpu:
            raise ValueError(f"device={device!r} was asked for but CUDA is not available.")
        warnings.warn(f"device={device!r} is not available here; the imputer runs on the CPU.", UserWarning,
                      stacklevel=caller_stacklevel())
        return torch.device("cpu")
    return resolved


#: The estimator's random streams, one per use, so that no use shifts another's draws
#: (a new stream goes at the end: a stream's seed depends on its position).
STREAMS = ("fit", "transform", "multiple_imputations", "score_samples", "conditional_draws", "initial_weights",
           "bootstrap", "initial_head", "predict")

#: Packages whose frames a warning skips, so that it points at the user's call.
_INTERNAL_PACKAGES = ("skivcnf", "sklearn", "torch")


def caller_stacklevel():
    """``stacklevel`` for ``warnings.warn`` that points at the first frame outside skivcnf.

    Frames of skivcnf, scikit-learn (``set_output`` wraps ``transform``, ``fit_transform``
    calls ``fit``) and torch (``no_grad`` decorators) are skipped, so a warning names the
    line of the user's own code, whichever public method it came from.
    """
    level, frame = 1, sys._getframe(1)  # stacklevel 1 is the function that calls warnings.warn
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _INTERNAL_PACKAGES:
        frame, level = frame.f_back, level + 1
    return level


def one_warning_per_kind(method):
    """Decorate a public method so that one call emits at most one warning of each class, at the caller's line.

    Warnings raised inside (one per batch, per solver call, per bootstrap model...) are
    recorded; at the end the first of each class is re-emitted, with the number of others
    appended. The user's filters apply to the re-emitted warnings (``"error"`` raises then).
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = method(*args, **kwargs)
        for category in dict.fromkeys(w.category for w in caught):
            same = [w for w in caught if w.category is category]
            more = f" (and {len(same) - 1} more {category.__name__}s in this call)" if len(same) > 1 else ""
            warnings.warn(f"{same[0].message}{more}", category, stacklevel=caller_stacklevel())
        return result

    return wrapper


class RandomStreams:
    """Independent, named random streams derived from one root seed.

    Stream ``name`` is seeded by ``numpy.random.SeedSequence(root_seed, spawn_key=(i,))``
    with ``i`` its index in :data:`STREAMS`: the ``i``-th child that
    ``SeedSequence(root_seed).spawn`` would give, so the streams are statistically
    independent, and adding a stream never changes another one.

    Parameters
    ----------
    root_seed : int
        Drawn once from the estimator's ``random_state`` (see :meth:`from_random_state`).

    Examples
    --------
    >>> from skivcnf._utils import RandomStreams
    >>> streams = RandomStreams(0)
    >>> streams.seed("transform") == RandomStreams(0).seed("transform") != streams.seed("fit")
    True
    >>> streams.seed("warm-up")
    Traceback (most recent call last):
        ...
    ValueError: unknown random stream 'warm-up'; the streams are ('fit', 'transform', 'multiple_imputations', \
'score_samples', 'conditional_draws', 'initial_weights', 'bootstrap', 'initial_head', 'predict').
    """

    def __init__(self, root_seed):
        self.root_seed = int(root_seed)

    @classmethod
    def from_random_state(cls, random_state):
        """Streams rooted in one integer drawn from ``random_state`` (int, RandomState or None)."""
        return cls(int(check_random_state(random_state).randint(np.iinfo(np.int32).max)))

    def seed(self, name):
        """The integer seed of stream ``name``."""
        if name not in STREAMS:
            raise ValueError(f"unknown random stream {name!r}; the streams are {STREAMS}.")
        sequence = np.random.SeedSequence(self.root_seed, spawn_key=(STREAMS.index(name),))
        return int(sequence.generate_state(1, dtype=np.uint64)[0])

    def generator(self, name, device="cpu"):
        """A ``torch.Generator`` on ``device`` seeded for stream ``name``."""
        return torch.Generator(device=device).manual_seed(self.seed(name))
