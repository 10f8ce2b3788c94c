"""Semantic segmentation (binary and multi-class) with the shared dense decoder."""
