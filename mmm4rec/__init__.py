"""MMM4Rec at scale: transferable multi-modal sequential recommendation on State Space Duality."""
__version__ = "0.1.0"
