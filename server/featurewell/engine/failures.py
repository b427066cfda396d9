"""What rows Redis did not serve mean for a call: a strict call's error, or the fallbacks a
lenient one reports (per view, reason and source) beside the values it answers."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from featurewell.engine.calls import Budget, FallbackCount
from featurewell.engine.plan import ViewRead
from featurewell.errors import DeadlineExceeded, FeaturewellError, StoreUnavailable
from featurewell.store.batch import Failure, FailureReason, describe
from featurewell.values import FALLBACK, FALLBACK_CACHE

log = logging.getLogger("featurewell.engine")


def strict_failure(failures: list[Failure], budget: Budget) -> FeaturewellError:
    """The error a strict call gets when Redis did not serve some of its rows: DEADLINE_EXCEEDED
    when the call's own deadline cut the read short, else UNAVAILABLE. Node addresses go to
    the log, not to the client."""
    log.warning("strict call failed: %d rows not read from Redis (%s)", *describe(failures))
    rows, what = describe(failures, nodes=False)
    detail = f"{rows} rows could not be read from Redis ({what}; the server log names the node)"
    timed_out = all(f.reason is FailureReason.TIMEOUT for f in failures)
    if timed_out and budget.deadline_bound:
        return DeadlineExceeded(f"the call's deadline expired waiting for Redis: {detail}")
    return StoreUnavailable(
        f"strict call: {detail}; retry, or call without strict to get flagged fallbacks"
    )


def count_fallbacks(
    read: ViewRead, fallback: npt.NDArray[np.uint8], reasons: npt.NDArray[np.uint8]
) -> list[FallbackCount]:
    """A view's fallback rows by reason, split by source (the cached row, or the defaults)."""
    out: list[FallbackCount] = []
    for reason in np.unique(reasons[reasons > 0]).tolist():
        mine = reasons == reason
        out.append(
            FallbackCount(
                read.view.ref,
                FailureReason(reason),
                int(np.count_nonzero(mine & (fallback == FALLBACK_CACHE))),
                int(np.count_nonzero(mine & (fallback == FALLBACK))),
            )
        )
    return out
