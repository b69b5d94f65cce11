from .items import ItemFeatures
from .recommender import Batch, ItemTables, SequentialRecommender, build_model, from_pretrained
from .ssd import ssd_scan

__all__ = ["Batch", "ItemFeatures", "ItemTables", "SequentialRecommender", "build_model", "from_pretrained",
           "ssd_scan"]
