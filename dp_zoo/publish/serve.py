"""A small REST server for an exported model, speaking TF Serving's JSON API.

TF Serving (``tensorflow_model_server``) is the production choice; it is not
pip-installable, so this module offers the same REST surface for local use
and tests, on loopback by default:

- ``GET  /v1/models/<name>``: version status.
- ``GET  /v1/models/<name>/metadata``: the serving signature.
- ``POST /v1/models/<name>[/versions/<v>]:predict`` with
  ``{"instances": [...]}`` (row format: one uint8 image ``[H, W, C]`` per
  instance, or ``{"images": ...}``), answering
  ``{"predictions": [{"probabilities": [...], "logits": [...]}, ...]}``; or
  ``{"inputs": ...}`` (columnar), answering ``{"outputs": {...}}``.
- Errors: ``{"error": "..."}`` with HTTP 400 / 404 / 413.

Run::

    python -m dp_zoo.serve wrn_digits_eps8 --port 8501
    python -m dp_zoo.serve --model saved_models/wrn_digits_eps8 --port 8501
    curl -d '{"instances": [...]}' localhost:8501/v1/models/wrn_digits_eps8:predict

The model (the argument, or ``--model``) is a zoo entry, an artifact
directory or its ``saved_model`` base directory. It is verified exactly as
``dp_zoo.load`` verifies it (``zoo.verified``: every file against the
MANIFEST, nothing unlisted, the card against its run record and the
accountant) before anything is loaded, and only the versions its MANIFEST
lists are served (the newest, as TF Serving does). A directory without a
MANIFEST is not served.
"""

import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from dp_zoo import cli

MAX_BODY_BYTES = 32 << 20  # refuse larger requests instead of buffering them
# Connections the kernel queues while every handler thread is busy (e.g. while the
# first prediction traces the graph). Python's default of 5 made a burst of 20
# clients lose most connections to resets; the kernel caps it at somaxconn.
LISTEN_BACKLOG = 1024
SOCKET_TIMEOUT_S = 60  # a client that stops sending mid-body frees its thread
_ROUTE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata|:predict)?$")


class RequestError(Exception):
    """A client error: HTTP status and message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _resolve(path_or_name):
    """(saved_model base dir, model name, listed versions) of a verified zoo entry or artifact directory.

    Raises:
      ValueError: the artifact fails verification, or its MANIFEST lists no SavedModel version.
    """
    from dp_zoo.publish import manifest, zoo

    p = str(path_or_name)
    norm = os.path.normpath(p)
    if os.path.basename(norm) == "saved_model" and os.path.isdir(norm):
        # A SavedModel base directory is served as the artifact it belongs to.
        parent = os.path.dirname(os.path.abspath(norm))
        if not os.path.exists(os.path.join(parent, manifest.FILENAME)):
            raise ValueError(f"{p} is not inside a dp_zoo artifact (no {manifest.FILENAME} beside it); serve an "
                             "exported artifact directory or a zoo entry.")
        p = parent
    directory, _ = zoo.verified(p)
    versions = sorted({int(parts[1]) for parts in (rel.split("/") for rel in manifest.listed_files(str(directory)))
                       if len(parts) == 3 and parts[0] == "saved_model" and parts[1].isdigit()
                       and parts[2] == "saved_model.pb"})
    if not versions:
        raise ValueError(f"{directory}/{manifest.FILENAME} lists no SavedModel version (saved_model/<n>/"
                         "saved_model.pb); re-export the model.")
    # A zoo entry's directory is named after the entry.
    return os.path.join(directory, "saved_model"), os.path.basename(os.path.normpath(str(directory))), versions


class ServedModel:
    """The newest of ``versions`` (numeric, verified by the caller) under a SavedModel base directory."""

    def __init__(self, base_dir, name, versions):
        import tensorflow as tf

        self.name = name
        self.version = max(versions)
        self._loaded = tf.saved_model.load(os.path.join(base_dir, str(self.version)))
        self.fn = self._loaded.signatures["serving_default"]
        (self.input_name, spec), = self.fn.structured_input_signature[1].items()
        self.input_shape = spec.shape.as_list()  # [None, H, W, C]
        self.outputs = sorted(self.fn.structured_outputs)
        # Concurrent requests share one graph; serialize them (CPU-bound anyway).
        self._lock = threading.Lock()

    def status(self):
        return {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self):
        def t(shape, dtype):
            return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(-1 if d is None else d)} for d in shape]}}

        n_out = self.fn.structured_outputs[self.outputs[0]].shape.as_list()
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {self.input_name: {"name": self.input_name, **t(self.input_shape, "DT_UINT8")}},
                "outputs": {o: {"name": o, **t(n_out, "DT_FLOAT")} for o in self.outputs},
                "method_name": "tensorflow/serving/predict",
            }}}},
        }

    def _images(self, value):
        """Validates nested lists of 0..255 integers into uint8 ``[N, H, W, C]``."""
        try:
            arr = np.asarray(value)
        except (ValueError, RecursionError):
            raise RequestError(400, "images must be nested lists of numbers of one shape [N, H, W, C]") from None
        if arr.dtype == object or arr.size == 0:
            raise RequestError(400, "images must be a non-empty nested list of numbers of one shape")
        want = self.input_shape[1:]
        if arr.ndim != 4 or list(arr.shape[1:]) != want:
            raise RequestError(400, f"images must have shape [N, {', '.join(map(str, want))}]; got {list(arr.shape)}")
        if (not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr))
                or np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > 255):
            # A silent uint8 cast would wrap 256 to 0: refuse instead.
            raise RequestError(400, "pixel values must be integers in 0..255 (uint8)")
        return arr.astype(np.uint8)

    def predict(self, body):
        import tensorflow as tf

        sig = body.get("signature_name", "serving_default")
        if sig != "serving_default":
            raise RequestError(400, f"unknown signature_name {sig!r}; this model serves 'serving_default'")
        if "instances" in body:
            inst = body["instances"]
            if not isinstance(inst, list) or not inst:
                raise RequestError(400, "'instances' must be a non-empty list")
            if isinstance(inst[0], dict):
                try:
                    inst = [i[self.input_name] for i in inst]
                except (KeyError, TypeError):
                    raise RequestError(400, f"each instance object needs the key {self.input_name!r}") from None
            row = True
        elif "inputs" in body:
            inst = body["inputs"]
            if isinstance(inst, dict):
                if self.input_name not in inst:
                    raise RequestError(400, f"'inputs' needs the key {self.input_name!r}")
                inst = inst[self.input_name]
            row = False
        else:
            raise RequestError(400, "request body needs 'instances' (row format) or 'inputs' (columnar format)")
        images = self._images(inst)
        with self._lock:
            out = self.fn(**{self.input_name: tf.constant(images)})
        out = {k: v.numpy().tolist() for k, v in out.items()}
        if row:
            n = len(images)
            return {"predictions": [{k: out[k][i] for k in self.outputs} for i in range(n)]}
        return {"outputs": out}


def _handler(model):
    class Handler(BaseHTTPRequestHandler):
        server_version = "dp_zoo.serve"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet by default; tests and CLIs read stdout
            if os.environ.get("DP_ZOO_SERVE_LOG"):
                super().log_message(fmt, *args)

        def _send(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            m = _ROUTE.match(self.path.split("?", 1)[0])
            if not m:
                raise RequestError(404, f"no such endpoint {self.path}; try /v1/models/{model.name}")
            name, version, action = m.groups()
            if name != model.name:
                raise RequestError(404, f"Servable not found for request: Latest({name}); serving {model.name!r}")
            if version is not None and int(version) != model.version:
                raise RequestError(404, f"version {version} of {name} not found; serving version {model.version}")
            return action

        def do_GET(self):
            try:
                action = self._route()
                if action == ":predict":
                    raise RequestError(405, "predict needs POST")
                self._send(200, model.metadata() if action == "/metadata" else model.status())
            except RequestError as e:
                self._send(e.status, {"error": str(e)})

        def do_POST(self):
            try:
                action = self._route()
                if action != ":predict":
                    raise RequestError(405, "only :predict accepts POST")
                body = _parse_json(self._read_body())
                if not isinstance(body, dict):
                    raise RequestError(400, "body must be a JSON object")
                self._send(200, model.predict(body))
            except RequestError as e:
                self._send(e.status, {"error": str(e)})
            except Exception as e:  # noqa: BLE001  report, keep serving
                self._send(500, {"error": f"{type(e).__name__}: {e}"})

        def _read_body(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                raise RequestError(400, "Content-Length must be a number of bytes") from None
            if length < 0 or length > MAX_BODY_BYTES:
                self.close_connection = True
                raise RequestError(413 if length > 0 else 400,
                                   f"Content-Length must be between 0 and {MAX_BODY_BYTES} bytes, got {length}")
            return self.rfile.read(length)

    Handler.timeout = SOCKET_TIMEOUT_S
    return Handler


def _parse_json(data):
    """The request body as JSON; any malformed body is a client error (400), never a server one."""
    try:
        return json.loads(data or b"null")
    except RecursionError:
        raise RequestError(400, "body is not valid JSON for this API: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, f"body is not valid JSON: {e}") from None


class _Server(ThreadingHTTPServer):
    """A thread per connection, with a listen backlog for bursts of clients."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


class ModelServer:
    """Serves one model over HTTP in a background thread.

    Args:
      model: zoo entry, artifact directory or its SavedModel base directory
        (verified first; only the versions its MANIFEST lists are served).
      host: interface; loopback by default (there is no authentication).
      port: TCP port; 0 picks a free one (see ``.port``).
      name: model name in the URL; default: the artifact's directory name.
    """

    def __init__(self, model, *, host="127.0.0.1", port=8501, name=None):
        base, default_name, versions = _resolve(model)
        self.model = ServedModel(base, name or default_name, versions)
        self.httpd = _Server((host, port), _handler(self.model))
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}/v1/models/{self.model.name}"

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _parser():
    p = cli.Parser("dp_zoo.serve", description="Serve an exported model over TF Serving's REST API.")
    p.add_argument("entry", nargs="?", metavar="MODEL",
                   help="the model to serve: a zoo entry, an artifact dir or its saved_model dir (verified first).")
    p.option("model", default=None, help="the model to serve, as a flag (instead of the argument MODEL).")
    p.option("host", default="127.0.0.1", help="Interface (default loopback; there is no authentication).")
    p.option("port", type=int, default=8501, help="TCP port (TF Serving's REST default).")
    p.option("name", default=None, help="Model name in the URL (default: the artifact's directory name).")
    return p


def main(argv=None):
    """Serves until interrupted; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.entry is None) == (args.model is None):
        parser.error("give the model to serve either as an argument or with --model"
                     if args.entry else "the model to serve is missing: python -m dp_zoo.serve MODEL")
    model = args.entry or args.model
    if not os.path.isdir(model):
        from dp_zoo.publish import zoo

        if model not in zoo.entries():  # a usage error (exit 2), not a broken artifact (exit 1)
            what = "no such directory" if os.sep in model else cli.unknown_name_message(
                "zoo entry", model, sorted(zoo.entries()))
            parser.error(f"MODEL {model!r}: {what}; give an artifact directory or a zoo entry "
                         "(python -m dp_zoo.zoo lists them)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without authentication", file=sys.stderr)
    try:
        server = ModelServer(model, host=args.host, port=args.port, name=args.name)
    except (ValueError, LookupError, OSError) as e:
        print(f"dp_zoo.serve: error: {e}", file=sys.stderr)
        return 1
    print(f"serving {server.model.name} version {server.model.version} at {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    cli.quiet_tensorflow()
    sys.exit(main())
