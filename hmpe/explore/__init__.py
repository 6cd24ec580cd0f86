"""``hmpe explore``: an interactive heatmap explorer in the browser (optional extra ``hmpe[explore]``).

    hmpe explore weights=best.pt source=nwpu-vhr10            # then open http://127.0.0.1:7860/

    from hmpe import Detector
    Detector("best.pt").explore("images/", port=7860)          # blocks; block=False returns the server

It sits above :mod:`hmpe.api` (it drives a :class:`~hmpe.api.Detector`); the computation it shows is the
library's own (:mod:`hmpe.models.heatmap.mask_stats`, :mod:`hmpe.viz.heatmap`).
"""

from __future__ import annotations

from hmpe.explore.session import ExploreSession, load_source


def serve(detector, source, host: str = "127.0.0.1", port: int = 7860, block: bool = True, scan: bool = True,
          **session_kw):
    """Start the explorer on ``host:port`` (``port=0``: a free port) for ``source`` (an image folder, file or
    glob; or a dataset YAML / shipped name, then with ground truth, ``split`` default ``val``).

    ``block=True`` serves until Ctrl-C; ``block=False`` returns the running
    :class:`~hmpe.explore.app.ExploreServer` (``.url``, ``.stop()``). Other keys go to
    :class:`~hmpe.explore.session.ExploreSession` (``split``, ``conf``, ``imgsz``, ``floor``, ``cache``)."""
    try:
        from hmpe.explore.app import ExploreServer
    except ImportError as err:
        raise ImportError(f"hmpe explore needs starlette and uvicorn ({err}): pip install 'hmpe[explore]'") from None
    server = ExploreServer(ExploreSession(detector, source, **session_kw), host, port, scan).start()
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"hmpe explore: WARNING: listening on {host}, not loopback: anyone who can reach this machine can "
              f"browse the source's images and detections")
    print(f"hmpe explore: {len(server.session.images)} images from {server.session.root}; open {server.url} "
          f"(Ctrl-C stops)" if block else f"hmpe explore: serving on {server.url}")
    if block:
        server.wait()
    return server


__all__ = ["serve", "ExploreSession", "load_source"]
