"""dtools: train, sample and evaluate denoising diffusion image models from the shell."""

__version__ = "0.1.0"
