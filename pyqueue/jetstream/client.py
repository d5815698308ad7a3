"""Client: one nats-py connection and the JetStream API requests pyqueue makes
over it, with bounded timeouts and errors mapped to pyqueue's.

URLs: one string of comma-separated nats://host[:port] or tls://host[:port]
(port 4222 by default), optionally with user:password@ or token@ before the
host; anything else is a ConfigError naming the URL.  Credentials never
appear in messages (display_url).
Connecting gives up after `connect_timeout` seconds (Unavailable, naming
the URLs and the last error).  The server must be nats-server 2.9 or newer
with JetStream enabled (Unsupported, Unavailable otherwise).  After a lost
connection the client reconnects to any node of the cluster without limit;
each call has its own deadline.

Transient failures (a request timed out, no responder, JetStream answered
503 while a leader is being elected) are retried by api_retry() until its
deadline, for requests that are safe to repeat.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
from typing import Any, Awaitable, Callable, Optional

from pyqueue.errors import Closed, ConfigError
from pyqueue.jetstream.errors import Unavailable, Unsupported

__all__ = ["Client", "ApiError", "parse_url", "display_url", "connect_options", "retry_transient", "MIN_SERVER", "TRANSIENT"]

MIN_SERVER = (2, 9, 0)
_SCHEMES = ("nats", "tls")
DEFAULT_PORT = 4222

# JetStream error codes pyqueue looks at (nats-server's errors.json).
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_NO_MESSAGE = 10037
ERR_WRONG_LAST_SEQ = 10071
ERR_MSG_TOO_LARGE = 10054
ERR_INSUFFICIENT_RESOURCES = 10023
ERR_REPLICAS_UNSUPPORTED = 10074
ERR_STREAM_NAME_IN_USE = 10058


class ApiError(Exception):
    """An error answer of the JetStream API (internal; mapped by callers)."""

    def __init__(self, code: int, err_code: int, description: str, what: str = "") -> None:
        super().__init__(f"{what}: {description} (code {code}, error {err_code})" if what else description)
        self.code = code
        self.err_code = err_code
        self.description = description


def parse_url(url: object) -> list[str]:
    """The server URLs of a connect string; ConfigError naming a bad one."""
    if not isinstance(url, str):
        raise TypeError(f"url must be str, not {type(url).__name__}")
    out = []
    for part in url.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"url {url!r} has an empty server address")
        if "://" not in part:
            raise ConfigError(f"server address {part!r} has no scheme; use nats://host:port")
        try:
            u = urllib.parse.urlsplit(part)
            port = u.port
        except ValueError as e:
            raise ConfigError(f"server address {part!r} is not a URL ({e})") from None
        if u.scheme not in _SCHEMES:
            raise ConfigError(f"server address {part!r} has scheme {u.scheme!r}; "
                              f"the JetStream backend takes {' or '.join(s + '://' for s in _SCHEMES)}")
        if not u.hostname:
            raise ConfigError(f"server address {part!r} has no host")
        if u.path not in ("", "/") or u.query or u.fragment:
            raise ConfigError(f"server address {part!r} has a path or query; use nats://host:port")
        out.append(f"{u.scheme}://{u.netloc}" if port else f"{u.scheme}://{u.netloc}:{DEFAULT_PORT}")
    return out


def display_url(servers: list[str]) -> str:
    """The servers, comma separated, with any user:password@ or token@ in
    them shown as ***@ (for messages and repr)."""
    out = []
    for server in servers:
        scheme, _, rest = server.partition("://")
        out.append(f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else server)
    return ",".join(out)


def connect_options(servers: list[str], *, user: Optional[str], password: Optional[str],
                    token: Optional[str], tls: Any) -> dict[str, Any]:
    """nats-py's connect options for the credentials given to connect():
    user and password together, or a token; tls an ssl.SSLContext (its CA
    and client certificate are the caller's).  ConfigError or TypeError on
    a bad combination."""
    import ssl
    out: dict[str, Any] = {}
    for what, value in (("user", user), ("password", password), ("token", token)):
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(f"{what} must be a non-empty str")
    if (user is None) != (password is None):
        raise ConfigError("user and password go together: give both or neither")
    if token is not None and user is not None:
        raise ConfigError("give a token or a user and password, not both")
    if (user is not None or token is not None) and any("@" in s.partition("://")[2] for s in servers):
        raise ConfigError("credentials are both in the URL and given as arguments: give them once")
    if user is not None:
        out["user"], out["password"] = user, password
    if token is not None:
        out["token"] = token
    if tls is not None:
        if not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext, not {type(tls).__name__}")
        out["tls"] = tls
    return out


def is_transient(e: BaseException) -> bool:
    """True for a failure that may pass by itself: a timeout, no responders,
    a lost connection being re-established, JetStream answering 503."""
    import nats.errors
    import nats.js.errors
    if isinstance(e, ApiError):
        return e.code == 503
    if isinstance(e, nats.js.errors.APIError):          # from nats-py's KV and JetStream calls
        return getattr(e, "code", None) == 503 or isinstance(e, nats.js.errors.ServiceUnavailableError)
    return isinstance(e, (asyncio.TimeoutError, nats.errors.NoRespondersError,
                          nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
                          nats.errors.OutboundBufferLimitError, nats.js.errors.NoStreamResponseError))


TRANSIENT = is_transient


class Client:
    """A connection to a JetStream cluster.  Its methods are coroutines, run
    on the broker's Bridge loop."""

    def __init__(self, nc: Any, servers: list[str], request_timeout: float) -> None:
        self.nc = nc
        self.servers = servers
        self.request_timeout = request_timeout
        self.version: tuple[int, int, int] = _version(nc)
        self.cluster_size = 1 + len(nc._server_info.get("connect_urls") or []) if nc._server_info.get("cluster") else 1
        self.last_error: Optional[BaseException] = None
        self.reconnects = 0       # times the connection was lost and made again (messages in flight are lost)
        self._js: Any = None

    def jetstream(self) -> Any:
        """The connection's nats-py JetStream context (publish_async keeps
        its reply subscription there, so there is one)."""
        if self._js is None:
            self._js = self.nc.jetstream(timeout=self.request_timeout, publish_async_max_pending=65536)
        return self._js

    @classmethod
    async def open(cls, servers: list[str], *, connect_timeout: float, request_timeout: float,
                   name: Optional[str], auth: Optional[dict[str, Any]] = None) -> "Client":
        """Connect and check the server: Unavailable or Unsupported on failure,
        within connect_timeout seconds.  auth: nats-py's user, password,
        token and tls options (see connect_options)."""
        try:
            import nats
        except ImportError as e:     # pragma: no cover - the extra is missing
            raise Unsupported("the JetStream backend needs nats-py: pip install 'pyqueue[jetstream]'") from e
        errors: list[BaseException] = []
        refused = asyncio.get_running_loop().create_future()

        async def on_error(e: Exception) -> None:
            errors.append(e)
            del errors[:-5]
            if _refusal(e) and not refused.done():
                refused.set_result(e)     # retrying cannot help: stop at once

        nc = nats.NATS()
        deadline = time.monotonic() + connect_timeout
        try:
            await _first_of(refused, nc.connect(
                # nats-py annotates these as int but takes seconds as float
                servers=servers, name=name or "pyqueue",
                connect_timeout=max(0.2, min(2.0, connect_timeout)),  # type: ignore[arg-type]
                allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]
                dont_randomize=False, error_cb=on_error, ping_interval=5, max_outstanding_pings=3,
                **(auth or {})),
                connect_timeout)
        except _Refused as e:
            await _close_quietly(nc)
            raise Unavailable(f"connecting to {display_url(servers)}: refused ({_describe(e.error)})") from None
        except asyncio.CancelledError:
            await _close_quietly(nc)
            raise
        except Exception as e:
            await _close_quietly(nc)
            last = errors[-1] if errors else e
            why = "timed out" if isinstance(e, asyncio.TimeoutError) else "failed"
            raise Unavailable(f"connecting to {display_url(servers)} {why} after {connect_timeout:g} s "
                              f"(last error: {_describe(last)})") from e
        client = cls(nc, servers, request_timeout)
        try:
            await client._check_server(deadline)
        except BaseException:
            await _close_quietly(nc)
            raise
        nc._error_cb = client._on_error
        nc._reconnected_cb = client._on_reconnected
        return client

    async def _on_error(self, e: Exception) -> None:
        self.last_error = e

    async def _on_reconnected(self) -> None:
        self.reconnects += 1

    async def _check_server(self, deadline: float) -> None:
        url = self.nc.connected_url.geturl() if self.nc.connected_url else self.servers[0]
        if self.version < MIN_SERVER:
            raise Unsupported(f"{url} runs nats-server {'.'.join(map(str, self.version))}; the JetStream "
                              f"backend needs {'.'.join(map(str, MIN_SERVER))} or newer")
        if not self.nc._server_info.get("jetstream"):
            raise Unavailable(f"{url} (nats-server {'.'.join(map(str, self.version))}) has JetStream "
                              f"disabled: start it with -js or a jetstream {{}} block")
        last: Optional[BaseException] = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"JetStream at {url} did not answer within the connect timeout "
                                  f"(last error: {_describe(last)}): is a meta leader elected?")
            try:
                await self.api("INFO", None, timeout=min(left, 1.0))
                return
            except ApiError as e:
                if e.code != 503:
                    raise Unavailable(f"JetStream at {url} refused this account: {e.description}") from e
                last = e
            except Exception as e:
                if not is_transient(e):
                    raise
                last = e
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- requests --

    async def api(self, suffix: str, body: Any = None, *, timeout: Optional[float] = None,
                  what: str = "") -> dict:
        """One request to $JS.API.<suffix>; the JSON answer, or ApiError.
        Raises nats' TimeoutError / NoRespondersError as they are."""
        import nats.errors
        payload = b"" if body is None else json.dumps(body).encode()
        if self.nc.is_closed:
            raise Closed("the JetStream connection is closed")
        try:
            msg = await self.nc.request(f"$JS.API.{suffix}", payload, timeout=timeout or self.request_timeout)
        except nats.errors.ConnectionClosedError:
            raise Closed("the JetStream connection is closed") from None
        resp = json.loads(msg.data) if msg.data else {}
        err = resp.get("error")
        if err:
            raise ApiError(err.get("code", 0), err.get("err_code", 0), err.get("description", ""), what)
        return resp

    async def api_retry(self, suffix: str, body: Any = None, *, deadline: float, what: str) -> dict:
        """api() retried on transient failures until `deadline` (monotonic);
        then Unavailable naming `what`.  Only for requests safe to repeat."""
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                return await self.api(suffix, body, timeout=max(0.05, min(left, self.request_timeout)), what=what)
            except Exception as e:
                if not is_transient(e):
                    raise
                attempt += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"{what}: no answer from JetStream in time "
                                      f"(last error: {_describe(e)})") from e
                await asyncio.sleep(min(left, _backoff(attempt)))

    async def kv_keys(self, bucket: str, pattern: str, *, deadline: float) -> list[str]:
        """Keys of KV `bucket` matching `pattern` (NATS wildcards) that hold a
        value: the stream's per-subject counts, filtered on the server
        ($JS.API.STREAM.INFO with subjects_filter; works on 2.9, unlike
        multi-filter consumers).  Keys are removed with purge_keys, which
        leaves no marker, so every listed subject is a live key."""
        prefix = f"$KV.{bucket}."
        out: list[str] = []
        offset = 0
        while True:
            info = await self.api_retry(f"STREAM.INFO.KV_{bucket}",
                                        {"subjects_filter": prefix + pattern, "offset": offset},
                                        deadline=deadline, what=f"listing keys of KV bucket {bucket}")
            subjects = (info.get("state") or {}).get("subjects") or {}
            out.extend(s[len(prefix):] for s in subjects)
            offset += len(subjects)
            total = int(info.get("total", 0) or 0)
            if not subjects or offset >= total:
                return out

    async def purge_keys(self, bucket: str, pattern: str, *, deadline: float) -> None:
        """Remove every value of the keys of `bucket` matching `pattern`, with
        no delete marker left behind."""
        await self.api_retry(f"STREAM.PURGE.KV_{bucket}", {"filter": f"$KV.{bucket}.{pattern}"},
                             deadline=deadline, what=f"purging {pattern} from KV bucket {bucket}")

    async def close(self) -> None:
        await _close_quietly(self.nc)


def _backoff(attempt: int) -> float:
    """Wait before retry `attempt` (1-based): 25 ms doubling to 0.5 s, +-25%."""
    return min(0.5, 0.025 * 2 ** min(attempt - 1, 5)) * random.uniform(0.75, 1.25)


backoff = _backoff


async def retry_transient(op: Callable[[], Awaitable[Any]], what: str, deadline: float) -> Any:
    """await op(), again on transient failures (a leader election) until the
    monotonic `deadline`, then Unavailable naming `what`.  Any other error
    (a failed compare-and-set, a missing key) passes through at once."""
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as e:
            if not is_transient(e):
                raise
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"{what}: no answer from JetStream in time ({_describe(e)})") from e
            await asyncio.sleep(min(left, _backoff(attempt)))


def _version(nc: Any) -> tuple[int, int, int]:
    v = nc.connected_server_version
    try:
        return (int(v.major), int(v.minor), int(v.patch))
    except (TypeError, ValueError, AttributeError):
        return (0, 0, 0)


def _describe(e: Optional[BaseException]) -> str:
    if e is None:
        return "none"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text


describe = _describe


class _Refused(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _refusal(e: BaseException) -> bool:
    """A connect error that retrying cannot mend: wrong credentials, a
    certificate that is not trusted."""
    import ssl
    if isinstance(e, ssl.SSLCertVerificationError):
        return True
    text = str(e).lower()
    return "authorization violation" in text or "authorization failed" in text or "authentication" in text


async def _first_of(refused: "asyncio.Future[Any]", connecting: Any, timeout: float) -> None:
    """Await `connecting` for up to `timeout` s; _Refused as soon as a
    refusal is reported (nats-py would go on retrying it)."""
    task = asyncio.ensure_future(connecting)
    try:
        done, _ = await asyncio.wait({task, refused}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    if task in done:
        task.result()
        return
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    if refused in done:
        raise _Refused(refused.result())
    raise asyncio.TimeoutError


async def _close_quietly(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.close(), 5)
    except BaseException:
        pass
