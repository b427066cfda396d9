"""featurewell's thin client: feature matrices for rankers and model servers in one call.

from featurewell.client import FeatureClient
with FeatureClient("localhost:50051") as client:
    result = client.get_features(["user_activity:*", "item_stats:*"],
                                 entities={"user_id": ["u1"], "item_id": items})
    matrix, names = result.to_numpy()
    client.write_features("user_session", {"user_id": ["u1"]}, [now_us],
                          {"device": ["tv"], "session_minutes": np.float32([12.5])})
"""

from featurewell.client._aio import AsyncFeatureClient
from featurewell.client._channel import ClientOptions
from featurewell.client._client import FeatureClient
from featurewell.client._errors import (
    DeadlineExceeded,
    FeatureClientError,
    InvalidArgument,
    InvalidValues,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from featurewell.client._near_options import NearCache
from featurewell.client._result import (
    Column,
    DeprecatedFeatureWarning,
    Fallback,
    FallbackReason,
    FeatureResult,
    Status,
    ValueType,
    ViewStatus,
    WriteResult,
)

__all__ = [
    "AsyncFeatureClient",
    "ClientOptions",
    "Column",
    "DeadlineExceeded",
    "DeprecatedFeatureWarning",
    "Fallback",
    "FallbackReason",
    "FeatureClient",
    "FeatureClientError",
    "FeatureResult",
    "InvalidArgument",
    "InvalidValues",
    "NearCache",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "ValueType",
    "ViewStatus",
    "WriteResult",
]
