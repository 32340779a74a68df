"""LLM prompt writing against a real chat-completions server on 127.0.0.1 (started here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zeroshot_plus import InputError
from zeroshot_plus.cli import main
from zeroshot_plus.text.llm import LLMError, build_messages, generate

REPO_DIR = Path(__file__).resolve().parents[1]
FAST = dict(timeout=0.3, progress=False)


class FakeLLM:
    """A chat-completions server. ``script[class]`` lists what the next requests for that
    class get: "ok", "timeout", "429", "500", "malformed" (content), "badbody" (HTTP body),
    "schema" (a list with an empty string and a number), "401", "hang"."""

    def __init__(self, classes, kind="descriptors", delay=0.0, retry_after="0"):
        self.classes, self.kind, self.delay, self.retry_after = classes, kind, delay, retry_after
        self.script: dict[str, list[str]] = defaultdict(list)
        self.requests: Counter = Counter()
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def items(self, name):
        return [f"{name} feature {i}" for i in range(3)]

    def handle(self, handler, body):
        text = body["messages"][-1]["content"]
        name = next(c for c in self.classes if f'"{c}"' in text)
        with self.lock:
            self.requests[name] += 1
            self.bodies.append(body)
            action = self.script[name].pop(0) if self.script[name] else "ok"
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if action in ("timeout", "hang"):
                time.sleep(1.0 if action == "timeout" else 30.0)
        finally:
            # The request stops counting before its answer is sent: once the client reads the
            # answer it may send the next request before this thread would get to run again.
            with self.lock:
                self.in_flight -= 1
        try:
            if action in ("429", "500", "401"):
                payload = json.dumps({"error": {"message": f"fake {action}"}}).encode()
                handler.send_response(int(action))
                if action == "429":
                    handler.send_header("Retry-After", self.retry_after)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)
                return
            if action == "badbody":   # an HTTP body that is not JSON at all
                payload = b'{"choices": [{"mess'
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)
                return
            content = {"malformed": '{"descriptors": ["unterminated',
                       "schema": json.dumps({self.kind: ["fine", "", 3]})}.get(
                action, json.dumps({self.kind: self.items(name)}))
            payload = json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self):
        self.server.shutdown()
        self.server.server_close()


CLASSES = ["tench", "goldfish", "great white shark", "tiger shark"]


@pytest.fixture
def llm():
    server = FakeLLM(CLASSES)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_llm_environment(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ZEROSHOT_PLUS_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)


def _generate(llm, tmp_path, classes=CLASSES, **options):
    return generate(classes, base_url=llm.url, model="fake-model", api_key="k",
                    cache_dir=tmp_path / "cache", **{**FAST, **options})


def test_answers_are_parsed_in_class_order_with_json_mode(llm, tmp_path):
    result = _generate(llm, tmp_path)
    assert list(result) == CLASSES
    assert result["tench"] == ["tench feature 0", "tench feature 1", "tench feature 2"]
    assert all(b["response_format"] == {"type": "json_object"} for b in llm.bodies)
    assert all(b["model"] == "fake-model" for b in llm.bodies)
    assert sum(llm.requests.values()) == 4


def test_timeout_429_500_malformed_and_bad_schema_are_retried(llm, tmp_path):
    llm.script["tench"] = ["timeout", "429", "500", "malformed", "badbody", "schema"]
    result = _generate(llm, tmp_path, max_attempts=7)
    assert result["tench"] == llm.items("tench")
    assert llm.requests["tench"] == 7
    assert all(llm.requests[c] == 1 for c in CLASSES[1:])


def test_retry_after_is_honoured(tmp_path):
    server = FakeLLM(["tench"], retry_after="1")
    server.script["tench"] = ["429"]
    try:
        start = time.perf_counter()
        _generate(server, tmp_path, classes=["tench"])
        assert time.perf_counter() - start >= 0.95   # back-off alone would wait ~1 ms
        assert server.requests["tench"] == 2
    finally:
        server.close()


def test_attempts_are_bounded_and_failures_named(llm, tmp_path):
    llm.script["goldfish"] = ["500"] * 10
    with pytest.raises(LLMError) as info:
        _generate(llm, tmp_path, max_attempts=3)
    message = str(info.value)
    assert "1 of 4 classes" in message and "'goldfish'" in message and "HTTP 500" in message
    assert llm.requests["goldfish"] == 3
    # the classes that succeeded were cached: once the server recovers, a second run asks
    # only for goldfish
    llm.script["goldfish"].clear()
    before = sum(llm.requests.values())
    result = _generate(llm, tmp_path)
    assert sum(llm.requests.values()) - before == 1
    assert result["goldfish"] == llm.items("goldfish")


def test_cache_prevents_repeat_requests(llm, tmp_path):
    first = _generate(llm, tmp_path)
    assert sum(llm.requests.values()) == 4
    assert _generate(llm, tmp_path) == first
    assert sum(llm.requests.values()) == 4
    # another kind, model or prompt option is another question
    _generate(llm, tmp_path, classes=["tench"], context="a type of fish")
    assert llm.requests["tench"] == 2
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5 and not list((tmp_path / "cache").rglob("*.partial"))


def test_concurrency_is_bounded(tmp_path):
    classes = [f"class {i}" for i in range(8)]
    server = FakeLLM(classes, delay=0.1)
    try:
        _generate(server, tmp_path, classes=classes, concurrency=2)
        assert server.max_in_flight == 2
    finally:
        server.close()


def test_rejected_key_fails_at_once(llm, tmp_path):
    llm.script["tench"] = ["401"] * 10
    with pytest.raises(LLMError, match="refused the API key"):
        _generate(llm, tmp_path, classes=["tench"])
    assert llm.requests["tench"] == 1


def test_no_key_and_no_endpoint_is_one_clear_sentence(tmp_path, capsys):
    with pytest.raises(InputError, match="no LLM endpoint is configured"):
        generate(["tench"], model="m", cache_dir=tmp_path)
    with pytest.raises(InputError, match="no LLM model"):
        generate(["tench"], api_key="k", cache_dir=tmp_path)
    classes = tmp_path / "classes.txt"
    classes.write_text("tench\ngoldfish\n")
    assert main(["describe", "--classes", str(classes), "--out", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zeroshot-plus: error: no LLM endpoint")


def test_prompts_name_the_schema_and_class():
    for kind in ("descriptors", "synonyms", "sentences"):
        messages = build_messages("great_white_shark", kind, context="a fish")
        text = messages[-1]["content"]
        assert '"great white shark" (a fish)' in text
        assert f'{{"{kind}": [' in text
    with pytest.raises(InputError, match="unknown kind 'colours'"):
        build_messages("tench", "colours")


def test_cli_describe_writes_the_file_and_resumes_after_a_kill(llm, tmp_path):
    """A run killed mid-way keeps what it was told; the rerun asks only for the rest."""
    llm.script["great white shark"] = ["hang"]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    out, cache = tmp_path / "descriptors.json", tmp_path / "cache"
    command = [sys.executable, "-m", "zeroshot_plus.cli", "describe", "--classes", str(classes),
               "--out", str(out), "--base-url", llm.url, "--model", "fake-model",
               "--api-key", "k", "--cache", str(cache), "--concurrency", "1",
               "--timeout", "60", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO_DIR, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO_DIR)})
    deadline = time.time() + 30
    while llm.requests["great white shark"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    assert dict(llm.requests) == {"tench": 1, "goldfish": 1, "great white shark": 1}

    assert main(["describe", "--classes", str(classes), "--out", str(out), "--base-url", llm.url,
                 "--model", "fake-model", "--cache", str(cache), "--no-progress",
                 "--timeout", "5"]) == 0
    assert dict(llm.requests) == {"tench": 1, "goldfish": 1, "great white shark": 2,
                                  "tiger shark": 1}
    written = json.loads(out.read_text())
    assert list(written) == CLASSES and written["tiger shark"] == llm.items("tiger shark")


def test_answers_are_validated_and_cleaned():
    from zeroshot_plus.text.llm import BadAnswer, parse_items

    text = '```json\n{"synonyms": ["Tinca tinca", " doctor fish ", "tinca tinca"]}\n```'
    assert parse_items(text, "synonyms") == ["Tinca tinca", "doctor fish"]
    for bad in (None, "", "[1]", '{"synonyms": []}', '{"synonyms": "tench"}',
                '{"descriptors": ["a"]}', '{"synonyms": ["ok", " "]}'):
        with pytest.raises(BadAnswer):
            parse_items(bad, "synonyms")


def test_transport_retries_and_reasked_answers_share_the_attempts(llm, tmp_path):
    # openai's own retry of the first 500, a re-ask of the malformed answer, then the last
    # allowed request fails: three requests in all, and the last failure is named
    llm.script["tench"] = ["500", "malformed", "500", "ok"]
    with pytest.raises(LLMError, match="'tench': HTTP 500"):
        _generate(llm, tmp_path, classes=["tench"], max_attempts=3)
    assert llm.requests["tench"] == 3


def test_answers_that_stay_malformed_are_reported_in_one_sentence(llm, tmp_path):
    llm.script["tench"] = ["malformed"] * 5
    with pytest.raises(LLMError) as info:
        _generate(llm, tmp_path, classes=["tench"], max_attempts=2)
    assert "'tench': the answer was not JSON" in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    assert llm.requests["tench"] == 2


def test_caption_parser_shares_the_client_retries_and_cache(tmp_path):
    from zeroshot_plus.text.parsing import LLMParser

    caption = "a dog chasing a ball"
    server = FakeLLM([caption], kind="objects")
    server.items = lambda name: {"dog": {"attributes": []}, "ball": {"attributes": []}}
    try:
        server.script[caption] = ["500", "malformed"]
        parser = LLMParser(base_url=server.url, model="m", cache_dir=tmp_path, timeout=0.3)
        for _ in range(2):
            assert [e.name for e in parser(caption).entities] == ["dog", "ball"]
        assert server.requests[caption] == 3
        server.script[caption] = ["500"] * 5
        strict = LLMParser(base_url=server.url, model="other", cache_dir=tmp_path,
                           max_attempts=2, timeout=0.3, fallback=False)
        with pytest.raises(LLMError, match="no valid parse of 'a dog chasing a ball'"):
            strict(caption)
        assert server.requests[caption] == 5
    finally:
        server.close()


# ---------------------------------------------------------------------- validation and fallback


def test_cache_entries_of_the_wrong_shape_are_asked_again_with_a_warning(llm, tmp_path, caplog):
    _generate(llm, tmp_path)
    files = {json.loads(f.read_text())["key"]["class"]: f
             for f in (tmp_path / "cache").rglob("*.json")}
    key = json.loads(files["tench"].read_text())["key"]
    files["tench"].write_text("[1, 2]")                                   # not a record
    files["goldfish"].write_text(json.dumps({"key": json.loads(
        files["goldfish"].read_text())["key"], "items": "a goldfish"}))    # not a list
    record = json.loads(files["great white shark"].read_text())
    files["great white shark"].write_text(json.dumps({**record, "items": ["fine", "", 3]}))
    caplog.set_level("WARNING")
    result = _generate(llm, tmp_path)
    assert result == {c: llm.items(c) for c in CLASSES}
    assert dict(llm.requests) == {"tench": 2, "goldfish": 2, "great white shark": 2,
                                  "tiger shark": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3 and all("asked again" in w for w in warnings)
    assert json.loads(files["tench"].read_text()) == {"key": key, "items": llm.items("tench")}
    caplog.clear()
    assert _generate(llm, tmp_path) == result and not caplog.records   # repaired for good


def _parse_server(caption, answers):
    """A FakeLLM whose answers to ``caption`` are the parse dicts in ``answers``, in turn."""
    server = FakeLLM([caption], kind="objects")
    server.items = lambda name: answers.pop(0) if len(answers) > 1 else answers[0]
    return server


def test_a_caption_parse_is_validated_before_it_is_cached_and_when_read(tmp_path, caplog):
    from zeroshot_plus.text.parsing import LLMParser

    caption = "a dog chasing a ball"
    good = {"dog": {"attributes": []}, "ball": {"attributes": ["red"]}}
    server = _parse_server(caption, [{"dog": {"attributes": 5}}, good])
    try:
        parser = LLMParser(base_url=server.url, model="m", cache_dir=tmp_path, timeout=0.3)
        assert [e.text for e in parser(caption).entities] == ["dog", "red ball"]
        assert server.requests[caption] == 2            # the bad answer was asked again
        entry = next(tmp_path.rglob("*.json"))
        record = json.loads(entry.read_text())
        assert json.loads(record["items"][0])["objects"] == good
        for bad in (["not json"], [json.dumps({"objects": {"dog": {}}, "connections": 3})],
                    "text", [1]):
            entry.write_text(json.dumps({**record, "items": bad}))
            caplog.clear()
            assert [e.text for e in parser(caption).entities] == ["dog", "red ball"]
            assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert server.requests[caption] == 6
    finally:
        server.close()


@pytest.mark.parametrize("failure,cause", [("401", "HTTP 401"), ("500", "HTTP 500"),
                                           ("unreachable", "could not connect")])
def test_a_fallback_to_the_rule_parser_is_announced_once_with_its_cause(failure, cause,
                                                                        tmp_path, caplog):
    from zeroshot_plus.text.parsing import LLMParser, parse_caption

    captions = ["a dog chasing a ball", "a cat on a mat"]
    server = FakeLLM(captions, kind="objects")
    for caption in captions:
        server.script[caption] = [failure] * 5
    url = server.url
    if failure == "unreachable":
        server.close()
    try:
        parser = LLMParser(base_url=url, model="m", cache_dir=tmp_path, max_attempts=1,
                           timeout=0.3)
        caplog.set_level("WARNING")
        for caption in captions:
            assert parser(caption) == parse_caption(caption)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and cause in warnings[0] and "rule parser" in warnings[0]
    finally:
        if failure != "unreachable":
            server.close()


@pytest.mark.parametrize("option,value", [("--timeout", "inf"), ("--timeout", "nan"),
                                          ("--timeout", "0"), ("--items", "-5"),
                                          ("--items", "0"), ("--concurrency", "0"),
                                          ("--attempts", "0"), ("--attempts", "x")])
def test_describe_numbers_are_range_checked_when_parsed(option, value, llm, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["describe", "--classes", "tench", "--out", str(tmp_path / "d.json"),
              "--base-url", llm.url, "--model", "m", "--cache", str(tmp_path), option, value])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"zeroshot-plus describe: error: argument {option}: ")
    assert "Traceback" not in last and not llm.requests
    with pytest.raises(InputError, match="timeout must be a finite number"):
        _generate(llm, tmp_path, timeout=float("inf"))
    with pytest.raises(InputError, match="n_items must be an integer >= 1"):
        _generate(llm, tmp_path, n_items=-5)


def test_ctrl_c_while_the_server_hangs_stops_at_once(llm, tmp_path):
    llm.script["goldfish"] = ["hang"]
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "zeroshot_plus.cli", "describe", "--classes",
               ",".join(CLASSES), "--out", str(tmp_path / "d.json"), "--base-url", llm.url,
               "--model", "fake-model", "--cache", str(cache), "--concurrency", "1",
               "--timeout", "60", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO_DIR, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_DIR)},
                               # a shell starts background jobs with Ctrl-C ignored, which
                               # children inherit
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 30
    while llm.requests["goldfish"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    start = time.perf_counter()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert time.perf_counter() - start < 5          # the hanging request is not waited for
    assert process.returncode == 130
    assert "interrupted; the answers received so far are cached" in err
    assert "Traceback" not in err
    assert [json.loads(f.read_text())["key"]["class"] for f in cache.rglob("*.json")] == ["tench"]


def test_answers_with_lone_surrogates_are_asked_again_not_cached(llm, tmp_path, caplog):
    from zeroshot_plus.text.llm import BadAnswer, parse_items
    from zeroshot_plus.text.parsing import LLMParser

    with pytest.raises(BadAnswer, match="lone surrogate"):
        parse_items('{"synonyms": ["ok", "bad \\ud800"]}', "synonyms")
    _generate(llm, tmp_path, classes=["tench"])
    entry = next((tmp_path / "cache").rglob("*.json"))
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps({**record, "items": ["bad \ud800"]}))   # written as \\ud800
    caplog.set_level("WARNING")
    assert _generate(llm, tmp_path, classes=["tench"]) == {"tench": llm.items("tench")}
    assert llm.requests["tench"] == 2 and "lone surrogate" in caplog.records[0].getMessage()
    caption = "a dog chasing a ball"
    server = _parse_server(caption, [{"dog\ud800": {}}, {"dog": {}}])
    try:
        parser = LLMParser(base_url=server.url, model="m", cache_dir=tmp_path, timeout=0.3)
        assert [e.name for e in parser(caption).entities] == ["dog"]
        assert server.requests[caption] == 2
    finally:
        server.close()


@pytest.mark.parametrize("blocked", ["cache", "kind"])
def test_a_cache_that_cannot_be_written_warns_once_and_answers(llm, tmp_path, caplog, blocked):
    """The cache folder (or its descriptors folder) is a regular file: every answer is still
    used, and one warning says the run goes on without caching."""
    if blocked == "cache":
        (tmp_path / "cache").write_text("in the way")
    else:
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "descriptors").write_text("in the way")
    result = _generate(llm, tmp_path, concurrency=4)
    assert result["tench"] == llm.items("tench") and len(result) == len(CLASSES)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "without caching" in warnings[0]
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert left == (["cache"] if blocked == "cache" else ["cache", "descriptors"])


# ---------------------------------------------------------------------- match --parser llm


@pytest.fixture
def pairs_file(tmp_path, make_image) -> Path:
    pairs = tmp_path / "pairs.csv"
    make_image(tmp_path / "im0.png", 0)
    make_image(tmp_path / "im1.png", 1)
    pairs.write_text("image,caption\nim0.png,a dog chasing a ball\nim1.png,a cat on a mat\n")
    return pairs


def _match(pairs: Path, tiny_config: str, *options: str) -> int:
    return main(["match", str(pairs), "--model", tiny_config, "--pretrained", "none",
                 "--no-progress", "--parser", "llm", *options])


def test_match_takes_the_llm_options_and_a_refused_key_names_one_it_has(
        pairs_file, tiny_config, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    captions = ["a dog chasing a ball", "a cat on a mat"]
    server = FakeLLM(captions, kind="objects")
    for caption in captions:
        server.script[caption] = ["401"] * 5
    try:
        assert _match(pairs_file, tiny_config, "--base-url", server.url, "--llm-model", "m",
                      "--api-key", "wrong") == 0
    finally:
        server.close()
    (warning,) = [r.getMessage() for r in caplog.records if "caption parser" in r.getMessage()]
    assert "HTTP 401" in warning and "rule parser" in warning and "--api-key" in warning
    assert [b["model"] for b in server.bodies] == ["m"]  # one request: a refused key is final


def test_match_caches_llm_parses_under_its_cache(pairs_file, tiny_config, tmp_path, capsys,
                                                 monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    captions = ["a dog chasing a ball", "a cat on a mat"]
    server = FakeLLM(captions, kind="objects")
    server.items = lambda name: {name.split()[1]: {"attributes": []}}  # the rules find two
    cache, out = tmp_path / "cache", tmp_path / "m.jsonl"
    try:
        for _ in range(2):
            assert _match(pairs_file, tiny_config, "--base-url", server.url, "--llm-model", "m",
                          "--cache", str(cache), "--out", str(out)) == 0
    finally:
        server.close()
    assert dict(server.requests) == {c: 1 for c in captions}   # the second run asked nothing
    assert len(list((cache / "llm").rglob("*.json"))) == 2
    assert not (tmp_path / "xdg").exists()
    entities = [json.loads(line)["entities"] for line in out.read_text().splitlines()]
    assert entities == [["dog"], ["cat"]]


@pytest.mark.parametrize("options, message", [
    (["--parser", "rules", "--api-key", "k"],
     "--api-key is used only with --parser llm or --label-matcher llm."),
    (["--parser", "llm", "--base-url", "http://127.0.0.1:9/v1"],
     "--parser llm needs the LLM's model name: give --llm-model or ZEROSHOT_PLUS_LLM_MODEL"),
])
def test_match_llm_options_are_checked_before_any_work(pairs_file, tiny_config, capsys,
                                                       options, message):
    assert main(["match", str(pairs_file), "--model", tiny_config, "--pretrained", "none",
                 *options]) == 2
    assert message in capsys.readouterr().err
