"""``segblocks demo``: a local click-to-segment page for the library's interactive models.

    pip install 'segblocks[demo]'
    segblocks demo                                  # http://127.0.0.1:7860/
    segblocks demo --checkpoint sam_tiny=runs/sam/last.ckpt --port 0

The page (served on the loopback interface only) lets the user upload an image or pick a
procedural sample (:mod:`segblocks.demo.samples`), click positive (left button, or the
"positive" toggle) and negative (right button, or the "negative" toggle) points, and see the
mask overlaid after each click with its decode latency; undo / reset, download the mask as PNG,
and switch among the models -- the classical baselines (``grabcut_clicks``, ``random_walker_clicks``:
no weights needed), the learned tiny presets (``sam_tiny``, ``sam_hrsam_tiny``, ``focsam_tiny``,
``mst_tiny``, ``inter2former_tiny``: random weights unless a checkpoint is given) and local
checkpoints (``--checkpoint NAME=PATH``, a Lightning ``.ckpt`` of an interactive recipe or a state
dict). Each image is encoded once per model; each click runs only the decoder
(:mod:`segblocks.demo.engine`).

Why the standard library's HTTP server rather than gradio: gradio would add some 35 packages
(FastAPI, uvicorn, pandas, huggingface-hub, ...) to a library whose demo needs one page and five
JSON endpoints; its image-click event reports no mouse button (so no right-click negatives); and
a plain page with stable element ids is what the headless-browser test drives. The server is
:class:`http.server.ThreadingHTTPServer` with one lock around the models (one local user).

Bad requests (a non-image upload, an image over the pixel limit, a click outside the image, an
unknown model) answer HTTP 400 with a message that the page shows; any other error answers 500
with its message. The server keeps serving in every case.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence
from urllib.parse import parse_qs, urlparse

from segblocks.demo.engine import DEFAULT_INPUT_SIZE, TINY_INPUT_SIZE, DemoEngine, DemoError, ModelSpec, encode_png
from segblocks.demo.page import PAGE_HTML
from segblocks.demo.samples import SAMPLE_NAMES, sample_image

__all__ = ["DEFAULT_MODELS", "build_model_specs", "main", "make_server"]

logger = logging.getLogger(__name__)

#: Models offered by default, in menu order; names that are not registered are left out.
DEFAULT_MODELS = (
    "grabcut_clicks", "random_walker_clicks", "sam_tiny", "sam_hrsam_tiny", "focsam_tiny", "mst_tiny", "inter2former_tiny",
)
#: Largest request body accepted (bytes).
MAX_BODY = 32 * 1024 * 1024


def _registry_builder(name: str, checkpoint: str | None = None):
    def build():
        from segblocks.lightning.interactive_module import resolve_interactive_model  # noqa: PLC0415
        from segblocks.models import create_model, load_checkpoint, read_state_dict  # noqa: PLC0415

        model = resolve_interactive_model(create_model(name))
        if checkpoint is not None:
            keys = read_state_dict(checkpoint)
            prefix = "model." if any(k.startswith("model.") for k in keys) else ""  # an InteractiveSegmentation .ckpt
            load_checkpoint(model, checkpoint, prefix=prefix)
        return model

    return build


def build_model_specs(models: Sequence[str], checkpoints: Sequence[str], *, input_size: int | None = None) -> list[ModelSpec]:
    """Menu entries: registry names (unknown ones dropped when they are defaults) and ``NAME=PATH`` checkpoints.

    Raises:
        ValueError: a malformed ``--checkpoint``, an unknown model name given explicitly, or a
            checkpoint that does not load.
    """
    from segblocks.models import is_model  # noqa: PLC0415

    def size_of(name: str) -> int | None:
        if name.endswith("_clicks"):  # the classical baselines take the image as it is
            return None
        return input_size or TINY_INPUT_SIZE.get(name, DEFAULT_INPUT_SIZE)

    specs = []
    for name in models:
        if not is_model(name):
            if models is DEFAULT_MODELS:
                continue
            raise ValueError(f"unknown model {name!r} (see segblocks.models.list_models())")
        specs.append(ModelSpec(label=name, build=_registry_builder(name), input_size=size_of(name)))
    for item in checkpoints:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint expects NAME=PATH (a registered model and a local file), got {item!r}")
        if not is_model(name):
            raise ValueError(f"--checkpoint {item!r}: unknown model {name!r} (see segblocks.models.list_models())")
        spec = ModelSpec(label=f"{name}@{path.rsplit('/', 1)[-1]}", build=_registry_builder(name, path), input_size=size_of(name))
        spec.build = _cached(spec.build)
        spec.build()  # load now: a wrong file fails at start-up, not on the page
        specs.insert(0, spec)  # a trained checkpoint is the natural default
    return specs


def _cached(fn):
    cache = []

    def wrapper():
        if not cache:
            cache.append(fn())
        return cache[0]

    return wrapper


def _json_body(handler: BaseHTTPRequestHandler, data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data or b"{}")
    except json.JSONDecodeError as err:
        raise DemoError(f"the request body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise DemoError("the request body must be a JSON object")
    return body


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """The engine's result for the page: the mask PNG as a data URL."""
    import base64  # noqa: PLC0415

    out = dict(result)
    out["mask_url"] = "data:image/png;base64," + base64.b64encode(out.pop("mask_png")).decode("ascii")
    return out


def make_handler(engine: DemoEngine) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``engine``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "segblocks-demo"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            logger.debug("%s - " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _guard(self, fn) -> None:
            try:
                fn()
            except DemoError as err:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            except Exception as err:  # noqa: BLE001 - any failure becomes a message; the server keeps serving
                logger.error("demo request %s failed:\n%s", self.path, traceback.format_exc())
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(err).__name__}: {err}"})

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.rfile.read(min(length, MAX_BODY))
                raise DemoError(f"upload too large: {length / 2**20:.1f} MiB (limit {MAX_BODY / 2**20:.0f} MiB)")
            return self.rfile.read(length) if length > 0 else b""

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._guard(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._guard(self._post)

        def _get(self) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE_HTML.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/config":
                self._json(HTTPStatus.OK, {"models": engine.model_names, "samples": list(SAMPLE_NAMES),
                                           "max_side": engine.max_side})
            elif url.path.startswith("/api/sample/"):
                name = url.path.rsplit("/", 1)[-1].removesuffix(".png")
                if name not in SAMPLE_NAMES:
                    raise DemoError(f"unknown sample {name!r}")
                self._send(HTTPStatus.OK, encode_png(sample_image(name)), "image/png")
            elif url.path == "/api/image.png":
                self._send(HTTPStatus.OK, engine.image_png(query.get("image_id")), "image/png")
            elif url.path == "/api/mask.png":
                image_id = query.get("image_id")
                self._send(HTTPStatus.OK, engine.mask_png(image_id), "image/png",
                           {"Content-Disposition": f'attachment; filename="mask_{image_id}.png"'})
            elif url.path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

        def _post(self) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            data = self._read_body()
            if url.path == "/api/image":
                result = engine.add_image(data, query.get("model") or engine.model_names[0])
            else:
                body = _json_body(self, data)
                image_id = body.get("image_id")
                if url.path == "/api/click":
                    result = engine.click(image_id, body.get("y"), body.get("x"), bool(body.get("positive", True)))
                elif url.path == "/api/undo":
                    result = engine.undo(image_id)
                elif url.path == "/api/reset":
                    result = engine.reset(image_id)
                elif url.path == "/api/model":
                    result = engine.set_model(image_id, str(body.get("model")))
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"})
                    return
            self._json(HTTPStatus.OK, _public(result))

    return Handler


def _check_loopback(host: str) -> str:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as err:
        raise ValueError(f"--host {host!r} does not resolve: {err}") from err
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"--host must be a loopback address (127.0.0.1, ::1, localhost); {host!r} is {sorted(addresses)}")
    return host


def make_server(engine: DemoEngine, *, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A threading HTTP server for ``engine`` on a loopback ``host`` (``port`` 0: a free port)."""
    _check_loopback(host)
    server_cls = ThreadingHTTPServer
    if ":" in host:
        class _V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6
        server_cls = _V6
    server = server_cls((host, port), make_handler(engine))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segblocks demo``."""
    parser = argparse.ArgumentParser(prog="segblocks demo", description="Serve the click-to-segment demo page on loopback.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (0: any free port; the URL is printed)")
    parser.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help=f"a registered interactive model to offer (repeatable; default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="offer registered model NAME with weights from a local file (a recipe's .ckpt or a state dict)")
    parser.add_argument("--input-size", type=int, default=None,
                        help=f"input side of the learned models (default: the tiny recipes' eval size, else {DEFAULT_INPUT_SIZE})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-side", type=int, default=1024, help="larger uploads are downscaled to this longest side")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="larger uploads are refused")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _check_loopback(args.host)
        specs = build_model_specs(tuple(args.models) if args.models else DEFAULT_MODELS, args.checkpoint,
                                  input_size=args.input_size)
    except (ValueError, FileNotFoundError) as err:
        print(f"segblocks demo: {err}", file=sys.stderr)
        return 2
    if not specs:
        print("segblocks demo: no interactive model is available (pip install 'segblocks[demo]')", file=sys.stderr)
        return 2
    engine = DemoEngine(models=specs, device=args.device, max_side=args.max_side,
                        max_pixels=int(args.max_megapixels * 1e6))
    server = make_server(engine, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(f"segblocks demo: serving on {url} (models: {', '.join(engine.model_names)}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
