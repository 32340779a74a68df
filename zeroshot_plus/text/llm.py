"""The LLM client, and the descriptors, synonyms and CuPL-style sentences it writes.

Any OpenAI-compatible chat-completions endpoint works (OpenAI, vLLM, Ollama, llama.cpp,
...): the base URL, model and key come from arguments or from the environment
(OPENAI_BASE_URL, ZEROSHOT_PLUS_LLM_MODEL, OPENAI_API_KEY). Nothing here runs unless asked:
the classifiers only read files.

``ChatClient`` is the one way the library asks an LLM (``generate`` here, ``LLMParser`` in
``parsing``): one JSON-mode chat request at a time, its answer text handed to a caller's
``parse`` hook. Timeouts, connection errors, 408/409/429 and 5xx are retried by the openai
client itself (exponential back-off from 0.5 s up to 8 s, or the server's Retry-After up to
two minutes); an answer the hook rejects with ``BadAnswer`` is asked again; both count
towards ``max_attempts`` requests. Failures become one-sentence errors: ``AttemptsExhausted``
when the attempts are spent, ``LLMError`` at once for a refused key or a rejected request.

Per class, ``generate`` asks for a JSON object ``{"<kind>": ["...", ...]}`` (the schema spelt
out in the prompt); an answer that is not such an object holding a non-empty list of
non-empty strings is asked again. Requests run on ``concurrency`` threads. Every valid answer
is written at once to its own JSON file in the cache (``LLMCache``: temporary file, fsync,
rename, so a file is whole or absent), keyed by (model, kind, class, prompt version and
prompt options): a run that is interrupted (Ctrl-C does not wait for the requests in
flight) resumes where it stopped, and nothing already answered is asked twice. An entry is
checked again when it is read: one that does not fit the schema is asked again, with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from tqdm.auto import tqdm

from ..data.files import atomic_output, os_error_cause, write_error
from ..errors import InputError
from .classnames import display_name, validate_classnames

log = logging.getLogger(__name__)

_RETRY_STATUS = (408, 409, 429)  # and 5xx: the statuses the openai client retries
T = TypeVar("T")


# ---------------------------------------------------------------------- the client


class LLMError(InputError):
    """The LLM endpoint refused the requests, or kept answering badly."""


class AttemptsExhausted(LLMError):
    """No valid answer within the allowed requests; the message says what failed last."""


class BadAnswer(ValueError):
    """An answer that does not fit the asked-for JSON schema: the question is asked again."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: base URL (None: OpenAI's), model name and API key."""

    base_url: str | None
    model: str
    api_key: str


def resolve_endpoint(base_url: str | None = None, model: str | None = None,
                     api_key: str | None = None) -> Endpoint:
    """Arguments first, then OPENAI_BASE_URL, ZEROSHOT_PLUS_LLM_MODEL and OPENAI_API_KEY.

    A base URL without a key is allowed (local servers need none); neither is an error.
    """
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
    model = model or os.environ.get("ZEROSHOT_PLUS_LLM_MODEL") or None
    if api_key is None and base_url is None:
        raise InputError("no LLM endpoint is configured: give an API key (--api-key or "
                         "OPENAI_API_KEY) for OpenAI, or the base URL of an OpenAI-compatible "
                         "server (--base-url or OPENAI_BASE_URL).")
    if model is None:
        raise InputError("no LLM model is named: give one with --model or "
                         "ZEROSHOT_PLUS_LLM_MODEL (e.g. gpt-4o-mini, or the name your server "
                         "serves).")
    return Endpoint(base_url, model, api_key or "unused")


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "zeroshot_plus" / "llm"


class LLMCache:
    """One JSON file per request key under ``directory``; each written atomically.

    A cache that cannot be written never fails the run: the first failure is logged once,
    later answers are used without being stored.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._writable = True
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._disable(f"cannot create '{directory}': {os_error_cause(exc)}")

    def path(self, key: dict) -> Path:
        digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()
        slug = re.sub(r"[^A-Za-z0-9]+", "-", key["class"]).strip("-")[:40] or "class"
        return self.directory / key["kind"] / f"{slug}-{digest}.json"

    def get(self, key: dict, check: Callable[[object], T]) -> T | None:
        """``check(items)`` of the entry for ``key``; None when there is none, or (with one
        warning) when it is unreadable or ``check`` rejects it with BadAnswer."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            log.warning("LLM cache: unreadable entry %s is asked again", path)
            return None
        try:
            if not isinstance(record, dict) or "key" not in record:
                raise BadAnswer("not a {key, items} record")
            return check(record.get("items")) if record["key"] == key else None
        except BadAnswer as exc:
            log.warning("LLM cache: entry %s is not a valid answer (%s); it is asked again",
                        path, exc)
            return None

    def put(self, key: dict, items: list[str]) -> None:
        if not self._writable:
            return
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path) as out:
                json.dump({"key": key, "items": items}, out, ensure_ascii=False, indent=1)
        except OSError as exc:
            self._disable(str(write_error(path, exc)).rstrip("."))
        except InputError as exc:
            self._disable(str(exc).rstrip("."))

    def _disable(self, failure: str) -> None:
        with self._lock:
            if self._writable:
                self._writable = False
                log.warning("LLM cache: %s; the run goes on without caching answers", failure)


class ChatClient:
    """JSON-mode chat requests to one endpoint, each answer checked by the caller's hook.

    max_attempts : requests per question, transport retries and re-asked answers together.
    timeout : seconds per request.
    The client is thread-safe: one instance serves every worker thread.
    """

    def __init__(self, endpoint: Endpoint, *, max_attempts: int, timeout: float):
        check_limits(timeout=timeout, max_attempts=max_attempts)
        import openai  # optional dependency, imported only when an LLM is really asked

        self.endpoint = endpoint
        self.max_attempts = max_attempts
        self._openai = openai
        self._client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key,
                                     timeout=timeout, max_retries=max_attempts - 1)

    def ask(self, messages: list[dict], parse: Callable[[str | None], T], *,
            temperature: float = 0.0, stop: threading.Event | None = None) -> T:
        """``parse(answer text)`` of the first answer that ``parse`` accepts.

        Raises AttemptsExhausted once ``max_attempts`` requests are spent (or ``stop`` is set
        before a re-ask), LLMError at once for a refused key or a rejected request.
        """
        left = self.max_attempts
        while True:
            if stop is not None and stop.is_set():
                raise AttemptsExhausted("the run was stopped")
            response = self._send(messages, temperature, retries=left - 1)
            left -= response.retries_taken + 1
            try:
                return parse(self._content(response))
            except BadAnswer as exc:
                if left <= 0:
                    raise AttemptsExhausted(str(exc)) from None
                log.info("%s; asking again (%d attempts left)", exc, left)

    def _send(self, messages: list[dict], temperature: float, retries: int):
        """One request, retried by openai up to ``retries`` times -> its raw response."""
        openai = self._openai
        try:
            return self._client.with_options(max_retries=retries).chat.completions \
                .with_raw_response.create(model=self.endpoint.model, messages=messages,
                                          temperature=temperature,
                                          response_format={"type": "json_object"})
        except openai.APITimeoutError:
            raise AttemptsExhausted("the request timed out") from None
        except openai.APIConnectionError as exc:
            raise AttemptsExhausted(f"could not connect ({exc})") from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in _RETRY_STATUS or status >= 500:
                raise AttemptsExhausted(f"HTTP {status}") from None
            if status in (401, 403):
                raise LLMError(f"the LLM endpoint refused the API key (HTTP {status}); check "
                               f"--api-key or OPENAI_API_KEY.") from None
            raise LLMError(f"the LLM endpoint rejected the request for model "
                           f"'{self.endpoint.model}' (HTTP {status}: {_message(exc)}).") from None

    def _content(self, response) -> str | None:
        """The answer text of a raw response; BadAnswer if it is not a chat completion."""
        try:
            completion = response.parse()
        except (self._openai.APIResponseValidationError, ValueError):  # a body that is not JSON
            raise BadAnswer("the response was not a valid chat completion") from None
        choices = getattr(completion, "choices", None)
        if not choices:
            raise BadAnswer("the answer had no choices")
        return getattr(getattr(choices[0], "message", None), "content", None)


class CachedAsker:
    """Base of a callable that asks an endpoint one validated question at a time: answers
    are cached on disk (nothing is asked twice), and a failing endpoint falls back.

    base_url / model / api_key : as ``resolve_endpoint``.
    cache_dir : answer cache (default ``~/.cache/zeroshot_plus/llm``).
    max_attempts, timeout : requests per question and seconds per request (``ChatClient``).
    fallback : on an endpoint that keeps failing, answer with the subclass's fallback (True;
        the first fallback is announced with its cause as a warning) or raise LLMError
        (False). An endpoint that refuses the key or the request is not asked again: later
        questions are answered from the cache or by the fallback.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, cache_dir: str | os.PathLike | None = None,
                 max_attempts: int = 4, timeout: float = 60.0, fallback: bool = True):
        self.endpoint = resolve_endpoint(base_url, model, api_key)
        self.cache = LLMCache(cache_dir if cache_dir is not None else default_cache_dir())
        self.client = ChatClient(self.endpoint, max_attempts=max_attempts, timeout=timeout)
        self.fallback = fallback
        self._fell_back = False
        self._refused = False  # the endpoint refused the key or the request: ask no more

    def answer(self, key: dict, messages: list[dict], read: Callable[[str | None], T],
               as_text: Callable[[T], str], fallback: Callable[[], T], *, failure: str,
               warning: str) -> T:
        """The answer to ``messages``: from the cache under ``key``, else asked, validated by
        ``read`` (content -> value, BadAnswer when invalid) and cached as ``as_text(value)``.
        On failure: ``fallback()``, with ``warning`` (a %s for the cause) logged the first
        time, or LLMError(``failure``) without fallback."""
        cached = self.cache.get(key, lambda items: read(_one_text(items)))
        if cached is not None:
            return cached
        if self._refused:
            return fallback()
        try:
            value = self.client.ask(messages, read)
        except LLMError as exc:
            self._refused = self.fallback and not isinstance(exc, AttemptsExhausted)
            if not self.fallback:
                raise LLMError(failure) from None
            if not self._fell_back:
                self._fell_back = True
                log.warning(warning, str(exc).rstrip("."))
            return fallback()
        self.cache.put(key, [as_text(value)])
        return value


def _one_text(items: object) -> str:
    """A cache entry of a CachedAsker: one JSON text; BadAnswer otherwise."""
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], str):
        raise BadAnswer("it does not hold one JSON text")
    return items[0]


def check_limits(*, timeout: float, **counts: int | None) -> None:
    """InputError unless ``timeout`` is a finite number of seconds > 0 and each count (None:
    its default) an integer >= 1."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise InputError(f"timeout must be a finite number of seconds > 0, got {timeout!r}.")
    for option, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InputError(f"{option} must be an integer >= 1, got {value!r}.")


def json_answer(content: str | None):
    """The JSON value of an answer (inside a ```json fence or bare); BadAnswer if none."""
    if not content:
        raise BadAnswer("the answer was empty")
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadAnswer(f"the answer was not JSON ({exc.msg})") from None


def check_text(data: object) -> None:
    """BadAnswer if a JSON value holds a lone surrogate (``"\\ud800"``): no UTF-8 file, and
    no strict JSON reader, takes one."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadAnswer("the answer held a lone surrogate, which is not text") from None


def _message(exc) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        body = error.get("message") if isinstance(error, dict) else body.get("message", error)
    return str(body or exc.message)[:200]


# ---------------------------------------------------------------------- the writers


KINDS = ("descriptors", "synonyms", "sentences")
PROMPT_VERSION = 1
DEFAULT_ITEMS = {"descriptors": 8, "synonyms": 5, "sentences": 10}
_SYSTEM = ("You help build image classifiers by writing short texts about visual categories. "
           "Reply with one JSON object and nothing else.")
_ASK = {
    "descriptors": (
        'List {n} short phrases, each naming one visual feature that helps recognise a {name} '
        'in a photograph: its shape, parts, colours, textures, size, or usual surroundings. '
        'Write each as a noun phrase of at most ten words and do not repeat the category name '
        '(for a "fire engine", for instance: "a long red truck", "ladders on the roof", '
        '"flashing lights on top").'),
    "synonyms": (
        'List up to {n} other names that people use for this category in photo captions and '
        'on the web: common, regional or informal names, and the scientific or technical '
        'name, the most common first. Give names only, without explanations, and leave out '
        '"{name}" itself.'),
    "sentences": (
        'Write {n} different sentences, each describing what a {name} looks like in a '
        'photograph, as someone explaining how to recognise one would. Each sentence names '
        'the {name} and has at most 25 words.'),
}


def build_messages(classname: str, kind: str = "descriptors", n_items: int | None = None,
                   context: str | None = None) -> list[dict]:
    """The chat messages asking for one class's items (the prompt is versioned)."""
    if kind not in KINDS:
        raise InputError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}.")
    name = display_name(classname)
    n = n_items or DEFAULT_ITEMS[kind]
    about = f'Category: "{name}"' + (f" ({context})" if context else "") + "."
    schema = f'Reply with JSON of the form {{"{kind}": ["...", "..."]}}.'
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": f"{about}\n{_ASK[kind].format(n=n, name=name)}\n{schema}"}]


def parse_items(content: str | None, kind: str) -> list[str]:
    """``{"<kind>": [str, ...]}`` -> the stripped, de-duplicated strings; BadAnswer if invalid."""
    data = json_answer(content)
    return valid_items(data.get(kind) if isinstance(data, dict) else None, kind)


def valid_items(items: object, kind: str) -> list[str]:
    """A non-empty list of non-empty strings -> stripped and de-duplicated; BadAnswer if not
    (an answer before it is cached, and a cache entry when it is read)."""
    if not isinstance(items, list) or not items:
        raise BadAnswer(f'the answer had no non-empty list under "{kind}"')
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise BadAnswer(f'the "{kind}" list held something other than non-empty strings')
    check_text(items)
    unique: dict[str, str] = {}
    for item in items:
        unique.setdefault(item.strip().lower(), item.strip())
    return list(unique.values())


def generate(classnames: Sequence[str], kind: str = "descriptors", *,
             base_url: str | None = None, model: str | None = None, api_key: str | None = None,
             cache_dir: str | os.PathLike | None = None, n_items: int | None = None,
             context: str | None = None, temperature: float = 0.0, concurrency: int = 4,
             max_attempts: int = 6, timeout: float = 60.0,
             progress: bool = True) -> dict[str, list[str]]:
    """``{class: [item, ...]}`` for every class, in class order, asking only for uncached ones.

    kind : "descriptors" (DCLIP), "synonyms" (REAL candidates) or "sentences" (CuPL).
    n_items : items to ask for per class (default: 8, 5, 10 by kind).
    context : words that disambiguate the classes, e.g. "a type of bird".
    concurrency : requests in flight at once.
    max_attempts : requests per class before giving up on it (``ChatClient``).
    timeout : seconds per request.

    Classes that still fail after max_attempts raise LLMError once every other class is done
    (and cached); a rejected key, unknown model or bad request raises LLMError at once.
    """
    names = validate_classnames(classnames)
    if kind not in KINDS:
        raise InputError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}.")
    check_limits(timeout=timeout, concurrency=concurrency, max_attempts=max_attempts,
                 n_items=n_items)
    endpoint = resolve_endpoint(base_url, model, api_key)
    cache = LLMCache(cache_dir if cache_dir is not None else default_cache_dir())
    keys = {name: {"model": endpoint.model, "kind": kind, "class": name,
                   "prompt_version": PROMPT_VERSION, "n_items": n_items, "context": context,
                   "temperature": temperature} for name in names}
    results = {name: cache.get(keys[name], lambda items: valid_items(items, kind))
               for name in names}
    todo = [name for name in names if results[name] is None]
    log.info("%s for %d classes: %d cached, %d to ask %s", kind, len(names),
             len(names) - len(todo), len(todo), endpoint.model)
    client = ChatClient(endpoint, max_attempts=max_attempts, timeout=timeout)
    stop = threading.Event()
    failures: dict[str, str] = {}

    def ask(name: str) -> None:
        try:
            items = client.ask(build_messages(name, kind, n_items, context),
                               lambda content: parse_items(content, kind),
                               temperature=temperature, stop=stop)
        except AttemptsExhausted as exc:
            failures[name] = str(exc)
            return
        cache.put(keys[name], items)
        results[name] = items

    with tqdm(total=len(names), initial=len(names) - len(todo), unit="class",
              desc=f"{kind} from {endpoint.model}", disable=not progress) as bar:
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm")
        try:
            futures = [pool.submit(ask, name) for name in todo]
            for future in futures:
                future.add_done_callback(lambda _: bar.update(1))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # a fatal LLMError surfaces here
        except BaseException as exc:
            stop.set()
            # Ctrl-C stops at once, not after a hanging request; a fatal answer lets the
            # requests in flight finish (and be cached)
            pool.shutdown(wait=not isinstance(exc, KeyboardInterrupt), cancel_futures=True)
            raise
        pool.shutdown()
    if failures:
        shown = "; ".join(f"'{n}': {e}" for n, e in list(failures.items())[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise LLMError(f"no valid answer for {len(failures)} of {len(names)} classes after "
                       f"{max_attempts} attempts each ({shown}{more}); the other classes are "
                       f"cached in '{cache.directory}', so running again asks only for these.")
    return {name: results[name] for name in names}
