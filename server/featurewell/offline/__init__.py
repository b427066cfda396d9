"""The offline side: feature history as Parquet (`OfflineStore`) and point-in-time-correct
training sets built from it (`get_historical_features`)."""

from featurewell.offline.store import OfflineStore
from featurewell.offline.training import STATUS_SUFFIX, get_historical_features

__all__ = ["STATUS_SUFFIX", "OfflineStore", "get_historical_features"]
