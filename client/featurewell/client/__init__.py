"""featurewell's thin client: feature matrices for rankers and model servers in one call.

from featurewell.client import FeatureClient
with FeatureClient("localhost:50051") as client:
    result = client.get_features(["user_activity:*", "item_stats:*"],
                                 entities={"user_id": ["u1"], "item_id": items})
    matrix, names = result.to_numpy()
"""

from featurewell.client._aio import AsyncFeatureClient
from featurewell.client._channel import ClientOptions
from featurewell.client._client import FeatureClient
from featurewell.client._errors import (
    DeadlineExceeded,
    FeatureClientError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServerError,
    Unavailable,
)
from featurewell.client._request import build_request, build_write_request, to_values
from featurewell.client._result import Column, Fallback, FallbackReason, FeatureResult, Status
from featurewell.v1.feature_service_pb2 import (
    VALUE_TYPE_BOOL,
    VALUE_TYPE_EMBEDDING,
    VALUE_TYPE_FLOAT32,
    VALUE_TYPE_FLOAT64,
    VALUE_TYPE_FLOAT64_LIST,
    VALUE_TYPE_INT64,
    VALUE_TYPE_INT64_LIST,
    VALUE_TYPE_STRING,
)

__all__ = [
    "VALUE_TYPE_BOOL",
    "VALUE_TYPE_EMBEDDING",
    "VALUE_TYPE_FLOAT32",
    "VALUE_TYPE_FLOAT64",
    "VALUE_TYPE_FLOAT64_LIST",
    "VALUE_TYPE_INT64",
    "VALUE_TYPE_INT64_LIST",
    "VALUE_TYPE_STRING",
    "AsyncFeatureClient",
    "ClientOptions",
    "Column",
    "DeadlineExceeded",
    "Fallback",
    "FallbackReason",
    "FeatureClient",
    "FeatureClientError",
    "FeatureResult",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServerError",
    "Status",
    "Unavailable",
    "build_request",
    "build_write_request",
    "to_values",
]
