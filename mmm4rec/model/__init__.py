from .factory import build_model, from_pretrained
from .items import ItemFeatures
from .recommender import Batch, ItemTables, SequentialRecommender, init_weights
from .ssd import ssd_scan

__all__ = ["Batch", "ItemFeatures", "ItemTables", "SequentialRecommender", "build_model", "from_pretrained",
           "init_weights", "ssd_scan"]
