"""Real HTTP serving on loopback with TF Serving's REST JSON API."""

import json
import re
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from dp_zoo.publish import serve
from tests import _zoo_helpers as H


@pytest.fixture(scope="module")
def server(tiny_artifact):
    path, model, rec = tiny_artifact
    with serve.ModelServer(path, port=0) as s:
        yield s, path


def _http(url, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _expected(path, images):
    fn = tf.saved_model.load(os.path.join(path, "saved_model", "1")).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(images=tf.constant(images)).items()}


def test_status_and_metadata(server):
    s, _ = server
    assert s.host == "127.0.0.1"
    status, body = _http(s.url)
    assert status == 200
    assert body["model_version_status"][0] == {"version": "1", "state": "AVAILABLE",
                                               "status": {"error_code": "OK", "error_message": ""}}
    status, body = _http(s.url + "/metadata")
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in sig["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "8", "8", "1"]
    assert set(sig["outputs"]) == {"probabilities", "logits"}


def test_predict_row_and_columnar_formats(server):
    s, path = server
    x = H.images(3)
    want = _expected(path, x)
    status, body = _http(s.url + ":predict", {"instances": x.tolist()})
    assert status == 200 and len(body["predictions"]) == 3
    np.testing.assert_allclose([p["logits"] for p in body["predictions"]], want["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], want["probabilities"],
                               rtol=1e-5, atol=1e-7)
    status, body = _http(s.url + "/versions/1:predict", {"instances": [{"images": im} for im in x.tolist()]})
    assert status == 200 and len(body["predictions"]) == 3
    status, body = _http(s.url + ":predict", {"inputs": {"images": x.tolist()}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["logits"], want["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("body,raw,status,match", [
    ({"instances": [[[[0]] * 8] * 7]}, None, 400, "shape"),
    ({"instances": [[[[256]] * 8] * 8]}, None, 400, "0..255"),
    ({"instances": [[[[1.5]] * 8] * 8]}, None, 400, "0..255"),
    ({"nothing": 1}, None, 400, "instances"),
    ({"instances": [], }, None, 400, "non-empty"),
    ({"instances": [[[[0]] * 8] * 8], "signature_name": "other"}, None, 400, "signature_name"),
    (None, b"{not json", 400, "JSON"),
])
def test_bad_requests_are_refused_with_tf_serving_errors(server, body, raw, status, match):
    s, _ = server
    got, resp = _http(s.url + ":predict", body, raw=raw)
    assert got == status and match in resp["error"]


def test_unknown_model_or_version_is_404(server):
    s, _ = server
    base = f"http://{s.host}:{s.port}/v1/models"
    assert _http(base + "/other:predict", {"instances": []})[0] == 404
    assert _http(s.url + "/versions/7")[0] == 404
    assert _http(f"http://{s.host}:{s.port}/nope")[0] == 404


class _FakeServer:
    """Stands in for ``serve.ModelServer`` in ``main()``: records its arguments, serves nothing."""

    calls = []

    def __init__(self, model, *, host, port, name):
        self.calls.append(dict(model=model, host=host, port=port, name=name))
        self.model = type("M", (), {"name": name or model, "version": 1})()
        self.url = f"http://{host}:{port}/v1/models/{self.model.name}"
        self.httpd = self

    def serve_forever(self):
        raise KeyboardInterrupt  # the user's Ctrl-C, at once

    def server_close(self):
        pass


@pytest.mark.parametrize("argv", [
    ["wrn_digits_eps8", "--port", "8501"],  # the zoo entry as a positional argument
    ["--port", "8501", "wrn_digits_eps8"],
    ["--model", "wrn_digits_eps8", "--port", "8501"],
])
def test_command_line_takes_the_model_as_argument_or_flag(argv, monkeypatch, capsys):
    monkeypatch.setattr(serve, "ModelServer", _FakeServer)
    _FakeServer.calls.clear()
    assert serve.main(argv) == 0, capsys.readouterr().err
    assert _FakeServer.calls == [dict(model="wrn_digits_eps8", host="127.0.0.1", port=8501, name=None)]
    assert "serving wrn_digits_eps8 version 1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    ([], "the model to serve"),
    (["a", "--model", "b"], "either as an argument or with --model"),
    (["a", "b"], "unrecognized arguments: b"),
])
def test_command_line_needs_exactly_one_model(argv, match, monkeypatch, capsys):
    monkeypatch.setattr(serve, "ModelServer", _FakeServer)
    with pytest.raises(SystemExit) as e:
        serve.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("dp_zoo.serve: error:") and match in err and err.count("\n") == 1


@pytest.mark.slow
def test_command_line_server(server, tmp_path):
    _, path = server
    import socket

    with socket.socket() as sock:  # a free port for the child process
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "dp_zoo.serve", "--model", path, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the model is loaded and the port bound
        assert "serving wrn_digits_eps8 version 1" in line, proc.stderr.read() if proc.poll() is not None else line
        url = f"http://127.0.0.1:{port}/v1/models/wrn_digits_eps8"
        deadline = time.time() + 30
        while True:
            try:
                status, body = _http(url + ":predict", {"instances": H.images(2).tolist()})
                break
            except urllib.error.URLError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert status == 200 and len(body["predictions"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw_post(port, path, body, headers=None, timeout=60):
    """One POST over a new connection (http.client, the real HTTP stack); returns (status, parsed body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def test_one_hundred_parallel_predicts_to_a_fresh_server_all_succeed(tiny_artifact):
    """A burst of connections at once, before the first prediction has run: none is reset or refused."""
    import concurrent.futures
    import threading

    path, _, _ = tiny_artifact
    n = 100
    x = H.images(2)
    want = _expected(path, x)["logits"]
    body = json.dumps({"instances": x.tolist()}).encode()
    with serve.ModelServer(path, port=0) as s:
        start = threading.Barrier(n)

        def one(_):
            start.wait(timeout=60)
            try:
                return _raw_post(s.port, f"/v1/models/{s.model.name}:predict", body)
            except OSError as e:  # ConnectionResetError, ConnectionRefusedError, timeouts
                return type(e).__name__, None

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(one, range(n), timeout=300))
    failures = [status for status, _ in results if status != 200]
    assert failures == [], f"{len(failures)} of {n} failed: {sorted(set(map(str, failures)))}"
    for _, got in results:
        np.testing.assert_allclose([p["logits"] for p in got["predictions"]], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("body, headers, match", [
    (b"[" * 200_000 + b"]" * 200_000, None, "nested too deeply"),
    (b'{"instances": ' + b"[" * 5_000 + b"0" + b"]" * 5_000 + b"}", None, "images must|same shape"),
    (b'{"instances": [[[["a"]]]]}', None, "pixel values|images must"),
    (json.dumps({"instances": [[[[float("inf")]] * 8] * 8]}).encode(), None, "pixel values"),
    (json.dumps({"instances": [[[[float("nan")]] * 8] * 8]}).encode(), None, "pixel values"),
    (b'{"instances": [[[[0]]]], "signature_name": {"a": 1}}', None, "signature_name"),
    (b"\xff\xfe{", None, "not valid JSON"),
    (b"{}", {"Content-Length": "abc"}, "Content-Length"),
])
def test_malformed_bodies_are_400_not_500(server, body, headers, match):
    s, _ = server
    status, got = _raw_post(s.port, f"/v1/models/{s.model.name}:predict", body, headers)
    assert status == 400 and re.search(match, got["error"]), (status, got)
    # The server keeps serving.
    assert _http(s.url)[0] == 200


@pytest.mark.parametrize("model, match", [("wrn_digits_eps9", "Unknown zoo entry 'wrn_digits_eps9'. Did you mean"),
                                          ("no/such/dir", "no such directory")])
def test_a_model_that_does_not_exist_is_a_usage_error_exit_2(model, match, capsys):
    with pytest.raises(SystemExit) as e:
        serve.main([model, "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("dp_zoo.serve: error:") and match in err[0]


def test_export_names_a_missing_path_as_a_usage_error_exit_2(tmp_path, capsys):
    from dp_zoo.commands import export as export_cli

    with pytest.raises(SystemExit) as e:
        export_cli.main(["--artifact", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--artifact" in err[0] and "no such file" in err[0]
