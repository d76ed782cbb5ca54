"""The toy world's pretraining tier: a procedural corpus that plays ImageNet-21k and the ViT trained on it."""
