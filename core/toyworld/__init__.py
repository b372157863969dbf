"""The toy world: procedural captioned images, and the small Stable Diffusion trained on them."""
