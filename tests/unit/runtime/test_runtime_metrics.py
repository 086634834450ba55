"""The ``error`` label of ``aosk_runtime_model_call_errors_total``: a bounded set,
whatever the model server answered."""

from __future__ import annotations

import pytest

from aosk.errors import AoskError, ModelRequestRejected, ModelTimeout, ModelUnavailable
from aosk.runtime.runtime import _model_error

URL = "http://model.invalid/v1"


@pytest.mark.parametrize(("error", "label"), [
    (ModelTimeout(URL, 30.0, attempts=3), "timeout"),
    (ModelUnavailable(URL, "ConnectError: refused"), "connection"),
    (ModelUnavailable(URL, "slow down", status=429), "rate_limited"),
    (ModelUnavailable(URL, "bad gateway", status=502), "server"),
    (ModelUnavailable(URL, "the answer has no choices", status=200), "other"),
    (ModelRequestRejected(URL, 400, "bad request"), "other"),
    (AoskError("anything else"), "other"),
])
def test_model_errors_map_onto_a_few_labels(error: AoskError, label: str) -> None:
    assert _model_error(error) == label
