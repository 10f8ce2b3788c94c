"""Reading PyTorch files a user names (``init``, a run's ``model.pt`` or ``last.pt``) without running their code.

``torch.load(weights_only=False)`` unpickles anything, and a pickle can run any command; timm and torchvision read
downloaded weights with ``weights_only=True``, and so does medtransfer for every file: tensors, numbers, strings and
plain containers load, anything else is refused with one line naming the file. Everything medtransfer writes
(backbone and model checkpoints, resume states) is made of those types alone.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from transfer.errors import UnsafeCheckpointError


def load_weights_only(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    Raises:
        UnsafeCheckpointError: the file holds objects that only a full unpickler builds (a class, a function, a
            ``__reduce__`` that calls a command); nothing of it was executed.
        Exception: torch's own error for a truncated or corrupt file (callers turn it into their one line).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # a corrupt legacy pickle, not a refused one
            raise
        named = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the first object it refused
        what = f"it names {named.group(1)}" if named else ""
        raise UnsafeCheckpointError(
            f"{path}: refused: loading it would unpickle Python objects beyond tensors and plain containers, which "
            f"can run code{f' ({what})' if what else ''}; if you trust the file, re-save its tensors "
            f"(torch.save(state_dict, ...)) and name that file instead") from None
