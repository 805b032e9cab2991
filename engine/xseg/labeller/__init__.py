"""A local browser labeller for XSeg polygons: `torchsae xseg label DIR` (DFL's XSeg editor, without Qt).

    server = LabelServer("workspace/data_dst/aligned", port=0)   # 127.0.0.1 only
    print(server.url)                                            # http://127.0.0.1:PORT/?token=...
    server.serve_forever()

It reads and writes the same DFLJPG polygons DFL's editor does (`seg_ie_polys`, engine.xseg.polys): what is
labelled here trains in DFL and the other way round. The page (index.html beside this file, no external
resources) shows one face at a time with its polygons over it (includes green, excludes cut out, as the
mask DFL rasterises), and edits them: click to add points, Enter (or clicking the first point) closes the
polygon, I / E switch between include and exclude, drag a point to move it, right-click a point to delete
it, Ctrl+Z undoes, Delete removes the selected polygon, Ctrl+S saves, A / D go to the previous / next face.
With `--model`, "Suggest" turns the XSeg model's mask of the face into include polygons to correct.

The HTTP API (JSON; every request carries the session token, as `X-Token` or `?token=`):
    GET  /api/faces                      [{"name", "width", "height", "polygons", "xseg_mask"}]
    GET  /api/faces/<name>/image         the face's JPEG bytes
    GET  /api/faces/<name>/polygons      {"polygons": [{"type": "include"|"exclude", "points": [[x, y], ...]}]}
    PUT  /api/faces/<name>/polygons      same body; checked (engine.xseg.polys), then written atomically
    GET  /api/faces/<name>/suggest       polygons from the model's mask (404 without --model)

Safety: the server binds 127.0.0.1 only; it answers only requests whose Host is 127.0.0.1/localhost:PORT
and that carry the random session token (so other web pages cannot read or change faces); face names must
be files of the folder (no paths). The folder is read strictly first (every file must be a DFLJPG); the
first save of a session backs up the metadata of every face (engine.xseg.apply.backup_metadata); each save
rewrites one face atomically, pixels untouched. A malformed polygon is refused with 400 and the reason.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np

from engine.faces import dfljpg
from engine.errors import DataError, TorchSAEError
from engine.xseg.apply import backup_metadata, list_faces, set_meta_key
from engine.xseg.labels import polygons_from_json
from engine.xseg.model import open_masker
from engine.xseg.polys import INCLUDE, Poly, parse_polys, to_dfl, type_name

__all__ = ["LabelServer", "serve", "polygons_from_mask"]

log = logging.getLogger("torchsae.xseg")

_PAGE = Path(__file__).with_name("index.html")
_MAX_BODY = 4 << 20


def _polys_json(polys: list[Poly]) -> dict:
    return {"polygons": [{"type": type_name(p.type), "points": p.pts.astype(float).round(3).tolist()} for p in polys]}


def polygons_from_mask(mask: np.ndarray, min_area: float = 16.0, epsilon: float = 1.0) -> list[Poly]:
    """Include polygons tracing a {0, 1} mask's outer contours (holes become exclude polygons), simplified
    with Douglas-Peucker at `epsilon` px; regions under `min_area` px² are dropped."""
    m = (np.asarray(mask).reshape(mask.shape[0], mask.shape[1]) >= 0.5).astype(np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out: list[Poly] = []
    if hierarchy is None:
        return out
    for c, h in zip(contours, hierarchy[0]):
        if cv2.contourArea(c) < min_area:
            continue
        pts = cv2.approxPolyDP(c, epsilon, True).reshape(-1, 2).astype(np.float32)
        if len(pts) >= 3:
            out.append(Poly(INCLUDE if h[3] < 0 else 0, pts))
    return sorted(out, key=lambda p: -p.type)  # includes first, as DFL draws them


class LabelServer:
    """The labeller's HTTP server (module doc). `port` 0 picks a free one; `model` enables suggestions."""

    def __init__(self, folder: str | Path, *, port: int = 0, model: str | Path | None = None):
        self.folder = Path(folder)
        files, _ = list_faces(self.folder)  # strict: every file a DFLJPG, before serving anything
        self.files = {p.name: p for p in files}
        self.token = secrets.token_urlsafe(16)
        self.lock = threading.Lock()
        self.backed_up = False
        self.masker = None
        if model is not None:
            self.masker = open_masker(model)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", int(port)), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    # ------------------------------------------------------------------ the API's work
    def faces(self) -> list[dict]:
        out = []
        for name, p in self.files.items():
            info = dfljpg.load(p)
            polys = parse_polys(info.meta.get("seg_ie_polys"), str(p))
            out.append({"name": name, "width": info.shape[1], "height": info.shape[0], "polygons": len(polys),
                        "xseg_mask": info.meta.get("xseg_mask") is not None})
        return out

    def polygons(self, name: str) -> dict:
        p = self.files[name]
        return _polys_json(parse_polys(dfljpg.load(p).meta.get("seg_ie_polys"), str(p)))

    def save(self, name: str, doc) -> dict:
        p = self.files[name]
        polys = polygons_from_json(doc, name)
        info = dfljpg.load(p)
        h, w = info.shape[:2]
        for i, poly in enumerate(polys):
            if len(poly.pts) and (poly.pts.min() < -w or poly.pts[:, 0].max() > 2 * w or poly.pts[:, 1].max() > 2 * h):
                raise DataError(f"{name}: polygon {i} lies far outside the {w}x{h} face")
        with self.lock:
            if not self.backed_up:
                backup_metadata(self.folder, list(self.files.values()), "label")
                self.backed_up = True
            set_meta_key(p, seg_ie_polys=to_dfl(polys))
        log.info("labeller: %s saved (%d polygons)", name, len(polys))
        return {"name": name, "polygons": len(polys)}

    def suggest(self, name: str) -> dict:
        if self.masker is None:
            raise KeyError("no XSeg model: start the labeller with --model to get suggestions")
        p = self.files[name]
        img = dfljpg.read_image(p).astype(np.float32) / 255.0
        h, w = img.shape[:2]
        r = self.masker.resolution
        mask = self.masker(cv2.resize(img, (r, r), interpolation=cv2.INTER_LANCZOS4))
        mask = cv2.resize(mask.reshape(r, r), (w, h), interpolation=cv2.INTER_LINEAR)
        return _polys_json(polygons_from_mask(mask, epsilon=max(1.0, w / 256)))

    # ------------------------------------------------------------------ HTTP
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet: one debug line per request
                log.debug("labeller: " + fmt, *args)

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _allowed(self, query: dict) -> bool:
                host = (self.headers.get("Host") or "").lower()
                if host not in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
                    return False
                token = self.headers.get("X-Token") or (query.get("token") or [""])[0]
                return secrets.compare_digest(token, server.token)

            def _route(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if not self._allowed(query):
                    self._json(HTTPStatus.FORBIDDEN, {"error": "forbidden: open the address the labeller printed"})
                    return
                segs = [unquote(s) for s in parts.path.split("/") if s]
                try:
                    if method == "GET" and segs == []:
                        self._send(HTTPStatus.OK, _PAGE.read_bytes(), "text/html; charset=utf-8")
                    elif method == "GET" and segs == ["api", "faces"]:
                        self._json(HTTPStatus.OK, {"folder": str(server.folder), "faces": server.faces(),
                                                   "suggest": server.masker is not None})
                    elif len(segs) == 4 and segs[:2] == ["api", "faces"] and segs[2] in server.files:
                        name, what = segs[2], segs[3]
                        if method == "GET" and what == "image":
                            self._send(HTTPStatus.OK, server.files[name].read_bytes(), "image/jpeg")
                        elif method == "GET" and what == "polygons":
                            self._json(HTTPStatus.OK, server.polygons(name))
                        elif method == "PUT" and what == "polygons":
                            n = int(self.headers.get("Content-Length") or 0)
                            if n > _MAX_BODY:
                                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                                return
                            doc = json.loads(self.rfile.read(n) or b"null")
                            self._json(HTTPStatus.OK, server.save(name, doc))
                        elif method == "GET" and what == "suggest":
                            self._json(HTTPStatus.OK, server.suggest(name))
                        else:
                            self._json(HTTPStatus.NOT_FOUND, {"error": f"no {method} {what}"})
                    else:
                        self._json(HTTPStatus.NOT_FOUND, {"error": "not found (face names are files of the folder)"})
                except (DataError, json.JSONDecodeError) as e:
                    self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
                except KeyError as e:
                    self._json(HTTPStatus.NOT_FOUND, {"error": str(e).strip("'\"")})
                except TorchSAEError as e:
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(e)})

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._route("GET")

            def do_PUT(self):  # noqa: N802
                self._route("PUT")

        return Handler

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (tests); `shutdown()` stops it."""
        t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        t.start()
        return t

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(folder: str | Path, *, port: int = 0, model: str | Path | None = None, open_browser: bool = True) -> None:
    """`torchsae xseg label DIR`: serve the labeller until Ctrl-C."""
    server = LabelServer(folder, port=port, model=model)
    print(f"XSeg labeller for {folder} ({len(server.files)} faces): {server.url}\n(Ctrl-C to stop; saves are "
          "written as you make them)", flush=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
