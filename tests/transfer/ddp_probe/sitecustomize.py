"""Test instrumentation for tests/transfer/test_ddp_four_tasks.py, imported at interpreter start-up when this folder
is on PYTHONPATH (``sitecustomize``): with MEDTRANSFER_TEST_RNG_PROBE set, every training step first appends a
fingerprint of torch's CPU RNG state, the stream its augmentations draw from, to ``<probe dir>/rank<RANK>.txt``."""
from __future__ import annotations

import os

_PROBE = os.environ.get("MEDTRANSFER_TEST_RNG_PROBE")

if _PROBE and os.environ.get("LOCAL_RANK") is not None:  # a torchrun worker, not the launcher
    import hashlib

    import torch

    import transfer.engine as _engine

    _forward = _engine._StepForward.forward

    def _probed(self, batch):  # noqa: ANN001, ANN202
        digest = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
        with open(os.path.join(_PROBE, f"rank{os.environ.get('RANK', '0')}.txt"), "a") as f:
            f.write(digest + "\n")
        return _forward(self, batch)

    _engine._StepForward.forward = _probed
