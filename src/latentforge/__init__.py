"""latentforge: train, sample, explore, evaluate and serve VAEs and GANs for images.

    import latentforge
    m = latentforge.load("runs/dcgan")      # a trained run directory
    images = m.sample(16, seed=0)           # uint8 numpy (16, H, W, C)
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "train", "TrainConfig", "load_images"]


def __getattr__(name: str):
    # Lazy imports: `import latentforge` stays cheap and runs nothing heavy.
    if name == "load":
        from .sample import load

        return load
    if name == "train":
        from .train import train

        return train
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    if name == "load_images":
        from .data import load_images

        return load_images
    raise AttributeError(f"module 'latentforge' has no attribute {name!r}")
