"""Heads shared by tasks: the dense decoder over a staged backbone's named feature maps."""
from transfer.heads.decoder import DenseDecoder, decoder_stages

__all__ = ["DenseDecoder", "decoder_stages"]
