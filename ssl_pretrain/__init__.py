"""Stage-1 methods, one module each, on the core's ``transfer.api.PretrainMethod``.

They are registered through the entry-point group ``medtransfer.pretrain_methods`` (``pyproject.toml``);
``base.py`` holds what the contrastive methods share, ``config.py`` their option sections, ``augment.py``
the views and the augmentation-prediction transforms.
"""
