"""HTTP outcomes become retry / skip / stop."""

from tasks.errors import (
    ConflictError,
    FatalError,
    NotFoundError,
    RejectedError,
    TransientError,
    classify_response,
    error_detail,
    parse_retry_after,
)


def test_429_is_transient_with_retry_after() -> None:
    err = classify_response(429, b"", {"Retry-After": "7"}, "POST /Users")
    assert isinstance(err, TransientError)
    assert err.retry_after == 7.0


def test_5xx_is_transient() -> None:
    assert isinstance(classify_response(503, b"down", {}, "GET /Users"), TransientError)


def test_auth_failures_stop_the_run() -> None:
    assert isinstance(classify_response(401, b"", {}, "GET /Users"), FatalError)
    assert isinstance(classify_response(403, b"", {}, "GET /Users"), FatalError)


def test_4xx_rejects_one_user() -> None:
    body = (
        b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],'
        b'"status":"400","scimType":"invalidValue","detail":"bad email"}'
    )
    err = classify_response(400, body, {}, "POST /Users")
    assert type(err) is RejectedError
    assert err.scim_type == "invalidValue"
    assert "bad email" in str(err)
    assert isinstance(classify_response(409, b"", {}, "POST /Users"), ConflictError)
    assert isinstance(classify_response(404, b"", {}, "GET /Users/x"), NotFoundError)


def test_detail_of_scim11_and_html_bodies() -> None:
    """SCIM 1.1 errors and HTML pages give a short readable detail."""
    assert error_detail(b'{"Errors":[{"description":"nope","code":"400"}]}') == ("nope", None)
    detail, _ = error_detail(b"<html><body>" + b"x" * 1000 + b"</body></html>")
    assert len(detail) <= 300


def test_retry_after_forms() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
