"""Object detection (``task: detection``): a torchvision detector over the staged backbone's named feature maps."""
