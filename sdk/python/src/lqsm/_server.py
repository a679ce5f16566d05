"""The HTTP conversation with an LQSM server: requests, error answers, and the
compatibility check at first contact."""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import httpx

from ._version import __version__
from .errors import ApiError, IncompatibleServer, ServerUnreachable

if TYPE_CHECKING:
    from .worker import _http

#: The oldest server release this SDK was tested against. The wire contract is the
#: `/v1` path prefix; the release number only rules out servers from before it.
OLDEST_SERVER_VERSION: Tuple[int, int, int] = (0, 1, 0)

#: The endpoints the SDK calls: a server whose API document lacks one is refused at
#: first contact instead of failing later on a 404.
REQUIRED_PATHS = ("/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/wait", "/v1/jobs/{id}/cancel")


def parse_version(text: str) -> Tuple[int, int, int]:
    """`"0.1.0"` as `(0, 1, 0)`; a pre-release or build suffix is ignored."""
    core = text.split("-", 1)[0].split("+", 1)[0]
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise IncompatibleServer(
            f"the server reports version `{text}`, which is not MAJOR.MINOR.PATCH; "
            "is the URL that of an LQSM server?"
        )
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def server_urls(url: Union[str, Sequence[str]]) -> List[str]:
    """The servers' URLs from one URL, a comma-separated list, or a sequence of them."""
    urls = url.split(",") if isinstance(url, str) else list(url)
    cleaned = [u.strip().rstrip("/") for u in urls if isinstance(u, str) and u.strip()]
    if not cleaned or len(cleaned) != len(urls):
        raise ValueError(f"url takes a server URL such as 'http://127.0.0.1:7420', or several, got {url!r}")
    return cleaned


def tls_context(ca_file: Optional[str]) -> ssl.SSLContext:
    """What `https://` servers are checked against: the system's CAs, and those of the
    PEM file `ca_file` when given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"ca_file {ca_file!r} cannot be used ({e}): give a PEM file of CA certificates") from e
    return context


class ServerConnection:
    """One HTTP client per app, shared by its tasks and results (httpx clients are
    thread-safe). The first request checks the server's version once. With several
    servers (any of them serves every call: a follower passes writes to the leader), a
    request that cannot connect to one goes to the next."""

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        token: Optional[str],
        request_timeout: float,
        ca_file: Optional[str] = None,
    ) -> None:
        self.urls = server_urls(url)
        self._current = 0
        headers = {"User-Agent": f"lqsm-python/{__version__}"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(headers=headers, timeout=request_timeout, verify=tls_context(ca_file))
        self._request_timeout = request_timeout
        self._checked_version: Optional[str] = None
        #: Exception types the app allows results to raise beyond those already
        #: imported, by `module.QualName` (see `App`).
        self.exception_types: Dict[str, type] = {}
        self._check_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server requests go to now."""
        return self.urls[self._current]

    def close(self) -> None:
        """Closes the connections the client keeps open."""
        self._client.close()

    def server_version(self) -> str:
        """The server's release, checked for compatibility on the first call."""
        with self._check_lock:
            if self._checked_version is None:
                self._checked_version = self._check_server()
            return self._checked_version

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Dict[str, Any]] = None,
        extra_timeout: float = 0.0,
    ) -> Any:
        """Sends a request and returns the decoded JSON answer; an error answer raises
        `ApiError`. `extra_timeout` lengthens the read timeout for long polls."""
        self.server_version()
        return self._send(method, path, json=json, params=params, extra_timeout=extra_timeout)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Dict[str, Any]] = None,
        extra_timeout: float = 0.0,
    ) -> Any:
        timeout = httpx.Timeout(self._request_timeout + extra_timeout)
        for tried in range(len(self.urls)):
            url = self.url
            try:
                response = self._client.request(method, url + path, json=json, params=params, timeout=timeout)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                # Nothing was sent: the next server may take it.
                if tried + 1 < len(self.urls):
                    self._current = (self._current + 1) % len(self.urls)
                    continue
                raise ServerUnreachable(self._unreachable(e)) from e
            except httpx.TransportError as e:
                # The request may have arrived: only the caller knows whether to repeat it.
                raise ServerUnreachable(self._unreachable(e)) from e
        if response.is_success:
            # 204 No Content (a delete, say) has no body to decode.
            return response.json() if response.content else None
        raise api_error(response)

    def _unreachable(self, error: Exception) -> str:
        return _unreachable_message(self.urls, error)

    def _check_server(self) -> str:
        # The server has no version endpoint; the OpenAPI document it serves carries the
        # release in `info.version` and lists the paths it serves.
        try:
            document = self._send("GET", "/v1/openapi.json")
        except ApiError as e:
            if e.status == 404:
                raise IncompatibleServer(
                    f"{self.url} serves no /v1/openapi.json: it is not an LQSM server, "
                    f"or one older than {'.'.join(map(str, OLDEST_SERVER_VERSION))}"
                ) from e
            raise
        info = document.get("info") if isinstance(document, dict) else None
        version = info.get("version") if isinstance(info, dict) else None
        if not isinstance(version, str):
            raise IncompatibleServer(
                f"{self.url}/v1/openapi.json has no `info.version`: is the URL that of an LQSM server?"
            )
        oldest = ".".join(map(str, OLDEST_SERVER_VERSION))
        if parse_version(version) < OLDEST_SERVER_VERSION:
            raise IncompatibleServer(
                f"the LQSM server at {self.url} is version {version}; this SDK "
                f"(lqsm {__version__}) needs {oldest} or newer: upgrade the server"
            )
        paths = document.get("paths", {})
        missing = [p for p in REQUIRED_PATHS if p not in paths]
        if missing:
            raise IncompatibleServer(
                f"the LQSM server at {self.url} (version {version}) does not serve "
                f"{', '.join(missing)}, which this SDK (lqsm {__version__}) needs"
            )
        return version


def _unreachable_message(urls: List[str], error: Exception) -> str:
    where = urls[0] if len(urls) == 1 else f"any of {', '.join(urls)}"
    return (
        f"cannot reach the LQSM server at {where} ({type(error).__name__}: {error}); "
        "check the URL, or start one with `lqsm standalone`"
    )


def api_error(response: "httpx.Response | _http.Response") -> ApiError:
    """The server's error answer as an `ApiError`; an answer that is not LQSM's error
    shape (a proxy's page, say) keeps its status and the start of its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), str):
        field = detail.get("field")
        return ApiError(
            response.status_code,
            detail["code"],
            str(detail.get("message", "")),
            field if isinstance(field, str) else None,
        )
    return ApiError(
        response.status_code,
        "unexpected_response",
        f"HTTP {response.status_code} from {response.url} without an LQSM error body: "
        f"{response.text[:200]!r}",
    )
