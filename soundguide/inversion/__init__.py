"""Real photos to latents: projection, LPIPS, face alignment and the `invert` command."""
