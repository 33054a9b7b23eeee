from __future__ import annotations

import pytest
import requests
import responses
import tenacity

from deploykit.errors import DeployError
from deploykit.smoke import smoke_test

URL = "http://app.test/health"
NO_WAIT = tenacity.wait_none()


@responses.activate
def test_passes_when_status_and_text_match(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body="hello v1", status=200)
    actions = make_actions()
    results = smoke_test([URL], status=200, contains="v1", timeout=5, actions=actions,
                         wait=NO_WAIT)
    assert [(r.url, r.ok, r.detail) for r in results] == [(URL, True, "200")]
    assert actions.out.getvalue() == f"Smoke test: {URL} answered 200 and contains 'v1'.\n"


@responses.activate
def test_retries_until_the_app_answers(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body=requests.ConnectionError("refused"))
    responses.get(URL, status=502)
    responses.get(URL, body="ok", status=200)
    results = smoke_test([URL], status=200, contains="", timeout=30, actions=make_actions(),
                         wait=NO_WAIT)
    assert results[0].ok
    assert len(responses.calls) == 3


@responses.activate
def test_wrong_status_fails_after_the_deadline(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, status=500)
    with pytest.raises(DeployError) as info:
        smoke_test([URL], status=200, contains="", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)
    assert info.value.message == f"Smoke test: {URL} answered 500, expected 200 (retried for 0 s)."
    assert "smoke_timeout" in info.value.hint
    assert info.value.status == "failed"


@responses.activate
def test_missing_text_fails(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body="hello v2", status=200)
    with pytest.raises(DeployError, match="answered 200 without the text 'v1'"):
        smoke_test([URL], status=200, contains="v1", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)


@responses.activate
def test_every_url_is_checked_with_its_own_expected_status(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get("http://a.test/", status=204)
    responses.get("http://b.test/", status=404)
    with pytest.raises(DeployError, match=r"http://b\.test/ answered 404, expected 204"):
        smoke_test(["http://a.test/", "http://b.test/"], status=204, contains="", timeout=0,
                   actions=make_actions(), wait=NO_WAIT)


@responses.activate
def test_connection_error_is_named(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(DeployError, match=r"no answer \(ConnectionError\)"):
        smoke_test([URL], status=200, contains="", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)
