"""MMM4Rec at scale: transferable multi-modal sequential recommendation on State Space Duality.

``from mmm4rec import Recommender`` is the serving API (mmm4rec.serving); it is imported on first use, so
``import mmm4rec`` (and the ``mmm4rec --help`` it serves) does not load torch.
"""
__version__ = "0.1.0"
__all__ = ["Recommender", "__version__"]


def __getattr__(name: str):
    if name == "Recommender":
        from .serving import Recommender

        return Recommender
    raise AttributeError(f"module 'mmm4rec' has no attribute {name!r}")
