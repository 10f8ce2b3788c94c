"""Runs: one module per kind of run (finetune, pretrain, evaluate, predict), built on the core and the plug-ins."""
