"""An app's token travels as `Authorization: Bearer <token>` to a server that
requires tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import lqsm
from conftest import standalone

TOKEN = "sdk-test-admin-token"


@pytest.fixture(scope="module")
def guarded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone whose server requires TOKEN (its own worker presents it)."""
    data_dir: Path = tmp_path_factory.mktemp("lqsm-tokens")
    with standalone(data_dir, "--admin-token", TOKEN, "--token", TOKEN) as url:
        yield url


def test_an_app_with_the_token_submits_and_gets(guarded_url: str) -> None:
    with lqsm.App(guarded_url, token=TOKEN) as app:

        @app.task(name="lqsm.echo")
        def echo(*args: Any) -> Any: ...

        assert echo.delay("hi").get(timeout=30) == {"args": ["hi"], "kwargs": {}}


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_an_app_without_the_right_token_gets_api_error_unauthorized(guarded_url: str, token: Any) -> None:
    with lqsm.App(guarded_url, token=token) as app:

        @app.task(name="lqsm.echo")
        def echo(*args: Any) -> Any: ...

        with pytest.raises(lqsm.ApiError) as raised:
            echo.apply_async(["hi"], confirm=True)
        assert raised.value.code == "unauthorized"
        assert raised.value.status == 401
        # Unconfirmed, the refusal comes with the flush (every job of the batch).
        echo.delay("hi")
        with pytest.raises(lqsm.SubmissionError) as refused:
            app.flush()
        assert all(
            isinstance(e, lqsm.ApiError) and e.code == "unauthorized" for e in refused.value.errors.values()
        )
