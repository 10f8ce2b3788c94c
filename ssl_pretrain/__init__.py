"""Stage-1 methods: importing this package registers them in ``transfer.protocols.PRETRAIN_METHODS``.

Each method is an ``nn.Module`` built as ``cls(backbone, cfg: PretrainConfig, image_size)`` with
``training_step``, ``after_optimizer_step``, ``media`` and an ``encoder`` attribute (the backbone;
only it goes in the checkpoint).
"""
from ssl_pretrain import augpred, byol, cae, moco, simclr  # noqa: F401  (registration)
from ssl_pretrain.augment import AUGPRED_TRANSFORMS, TwoViewAugment  # noqa: F401
from ssl_pretrain.augpred import AugPred  # noqa: F401
from ssl_pretrain.byol import BYOL  # noqa: F401
from ssl_pretrain.cae import CAE  # noqa: F401
from ssl_pretrain.moco import MoCo  # noqa: F401
from ssl_pretrain.simclr import SimCLR  # noqa: F401
