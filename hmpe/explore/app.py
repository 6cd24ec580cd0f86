"""The explorer's web app: a Starlette app serving one static page and a small JSON API.

Why Starlette + uvicorn and a hand-written page rather than Gradio: two small pure-Python packages
(Gradio pulls in FastAPI, pandas, a Node-built front end and hundreds of MB), a page whose every element
has an id a browser test can drive, and an API that only names images by their index or by their name
in the source's allow-list (:meth:`ExploreSession.resolve`), so the page cannot read other files.

Routes (all GET): ``/`` the page; ``/api/info``; ``/api/detections/{i}``; ``/api/maps/{i}?tau=&gate=&level=
&cls=&conf=`` (overlays as PNG data URLs + mask statistics); ``/api/ranking?conf=``; ``/image/{name}``
(an image of the source, by its name relative to the source root); ``/api/colourbar.png``.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from importlib import resources

import numpy as np
from PIL import Image

from hmpe.data.images import load_image
from hmpe.explore.session import ExploreSession, UnknownImage
from hmpe.viz.heatmap import NEAREST_KEYS, colourise, fit_for_display, map_range, upsample_map

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)  # speed over size: the page is local
    return buf.getvalue()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def render_overlay(name: str, m: np.ndarray, size: tuple[int, int]) -> dict:
    """One figure map -> a data URL coloured like its bar, with the bar's range. As in ``hmpe heatmap``: the
    heatmaps upsampled bilinearly to the displayed image ``size`` (H, W) (JPEG); Mask and |PE'| are per cell,
    so they go at grid size (PNG) and the page scales them up with nearest-neighbour (``pixelated``)."""
    lo, hi = map_range(m)
    if any(k in name.lower() for k in NEAREST_KEYS):
        data, kind = _png(colourise(m, lo, hi)), "png"
    else:
        data, kind = _jpeg(colourise(upsample_map(m, size), lo, hi)), "jpeg"
    return {"png": f"data:image/{kind};base64,{base64.b64encode(data).decode()}", "lo": lo, "hi": hi,
            "grid": list(m.shape)}


def render_overlays(maps: dict, size: tuple[int, int], cache: dict | None = None, keys: dict | None = None) -> dict:
    """``render_overlay`` of every map; a map with an entry in ``keys`` is taken from / stored in ``cache`` under
    that key (H_class and H_bbox do not change with the threshold, H_mixed only with the gate)."""
    out = {}
    for name, m in maps.items():
        key = (keys or {}).get(name)
        if cache is not None and key is not None and key in cache:
            out[name] = cache[key]
            continue
        out[name] = render_overlay(name, m, size)
        if cache is not None and key is not None:
            cache[key] = out[name]
    return out


def _number(params, key: str, default, cast=float):
    v = params.get(key)
    if v in (None, "", "null", "learned", "top"):
        return default
    try:
        return cast(v)
    except ValueError:
        raise ValueError(f"{key}={v!r}: expected a number") from None


def build_app(session: ExploreSession, allowed_hosts: list[str] | None = None):
    """The Starlette app over ``session``. ``allowed_hosts``: Host headers accepted (default: the loopback
    names), so a page on another site cannot reach the server through DNS rebinding."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = resources.files("hmpe.explore").joinpath("page.html").read_text(encoding="utf-8")
    bar = _png(colourise(np.linspace(1.0, 0.0, 256)[:, None].repeat(12, 1), 0.0, 1.0))  # top = high

    def guarded(fn):
        def endpoint(request):
            try:
                return fn(request)
            except PermissionError as err:
                return JSONResponse({"error": str(err)}, status_code=403)
            except UnknownImage as err:
                return JSONResponse({"error": str(err)}, status_code=404)
            except ValueError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
        return endpoint

    def index_of(request) -> int:  # 0..n-1; anything else (-1, past the end, not a number) is a 404
        raw = request.path_params["i"]
        return session.index(int(raw) if raw.removeprefix("-").isdecimal() else raw)

    def maps(request):
        t0 = time.perf_counter()
        q, i = request.query_params, index_of(request)
        level = q.get("level", "0")
        level = "max" if level == "max" else _number(q, "level", 0, int)
        e = session.entry(i)
        gate, cls = _number(q, "gate", None), _number(q, "cls", None, int)
        fmaps, stats = session.maps(i, _number(q, "tau", session.info()["tau"]), gate, level, cls,
                                    _number(q, "conf", session.conf))
        keys = {"H_class": ("H_class", level, cls), "H_bbox": ("H_bbox", level), "H_mixed": ("H_mixed", level, gate)}
        overlays = render_overlays(fmaps, e["display"].shape[:2], e.setdefault("overlays", {}), keys)
        return JSONResponse({"maps": overlays, "stats": stats, "server_ms": round((time.perf_counter() - t0) * 1e3, 1)})

    def image(request):
        """The displayed image (at most 640 px a side, the overlays' size), by its name in the allow-list."""
        path = session.resolve(request.path_params["name"])
        small, _ = fit_for_display(load_image(path), np.zeros((0, 4)), session.max_side)
        return Response(_jpeg(small), media_type="image/jpeg")

    routes = [
        Route("/", lambda r: HTMLResponse(page)),
        Route("/api/info", guarded(lambda r: JSONResponse(session.info()))),
        Route("/api/detections/{i}", guarded(lambda r: JSONResponse(session.summary(index_of(r))))),
        Route("/api/maps/{i}", guarded(maps)),
        Route("/api/ranking", guarded(lambda r: JSONResponse(session.ranking(_number(r.query_params, "conf",
                                                                                     session.conf))))),
        Route("/api/colourbar.png", lambda r: Response(bar, media_type="image/png")),
        Route("/image/{name:path}", guarded(image)),
    ]
    hosts = allowed_hosts or list(LOOPBACK) + ["[::1]"]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ExploreServer:
    """A running explorer (uvicorn in a background thread): ``url``, ``session``, ``stop()``."""

    def __init__(self, session: ExploreSession, host: str = "127.0.0.1", port: int = 7860, scan: bool = True):
        import uvicorn

        self.session, self.host = session, host
        self.port = free_port(host) if int(port) == 0 else int(port)
        hosts = None if host in LOOPBACK else ["*"]  # served beyond loopback on purpose: any Host header
        config = uvicorn.Config(build_app(session, hosts), host=host, port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.server.run, daemon=True, name="hmpe-explore")]
        if scan and session.has_gt:  # the ranking by misses needs every image run once
            session.scanning = True
            self._threads.append(threading.Thread(target=session.scan, args=(self._stop,), daemon=True,
                                                  name="hmpe-explore-scan"))

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}/"

    def start(self, timeout: float = 30.0) -> "ExploreServer":
        self._threads[0].start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self._threads[0].is_alive():
                raise OSError(f"the explorer could not listen on {self.host}:{self.port} (port in use? try port=0)")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the explorer did not start on {self.host}:{self.port} in {timeout:.0f} s")
            time.sleep(0.05)
        for t in self._threads[1:]:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.should_exit = True
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=10)

    def wait(self) -> None:
        """Block until Ctrl-C, then stop."""
        try:
            while self._threads[0].is_alive():
                self._threads[0].join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
