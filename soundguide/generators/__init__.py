"""Image generators: ``nn.Module``s that know nothing about plugins."""
