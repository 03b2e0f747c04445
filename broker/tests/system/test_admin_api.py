"""The admin HTTP API's health endpoints (spated only; loopback)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from spate_harness import HOST

pytestmark = pytest.mark.spate_only


def get(broker, path: str) -> tuple[int, dict]:
    url = f"http://{HOST}:{broker.admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_live_and_ready(broker):
    assert get(broker, "/v1/status/live") == (200, {"status": "live"})
    assert get(broker, "/v1/status/ready") == (200, {"status": "ready"})


def test_unknown_endpoint_is_404(broker):
    status, body = get(broker, "/v1/nope")
    assert status == 404
    assert "/v1/nope" in body["error"]
