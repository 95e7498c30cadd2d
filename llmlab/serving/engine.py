"""The generation engine behind `llmlab.serving.generate` (lab 14 serves lab 04's GPT): a causal
LM loaded from safetensors, one `Stream` per request, and one engine thread that advances every
active stream by one token per iteration, each step one token's forward thanks to the KV cache.
Built and used in lab 14."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmlab.config import pick_device
from llmlab.generation import next_token
from llmlab.serving.batching import QueueFull
from llmlab.serving.classifier import ModelCheckError

log = logging.getLogger("llmlab.generate")
FINISH_REASONS = ("length", "eos", "deadline", "error")
PROBE_PROMPT = "Hello"


@dataclass
class LanguageModel:
    """A loaded causal LM, its tokenizer and its limits."""

    model: Any
    tokenizer: Any
    n_positions: int
    eos_token_id: int | None
    version: str

    def encode(self, prompt: str) -> list[int]:
        """Token ids of `prompt` (no special tokens added)."""
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def step(self, ids: list[int], past: Any) -> tuple[torch.Tensor, Any]:
        """Logits (1, vocab) of the next token after `ids` given the cache `past` of the tokens
        before them, and the cache extended by `ids`. Ids past the tokenizer's (the padding of
        the output layer) get -inf: they decode to nothing."""
        device = self.model.device
        with torch.inference_mode():
            inputs = torch.tensor([ids], dtype=torch.long, device=device)
            output = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
            # On the CPU: the token goes to the host anyway, and a request's CPU generator
            # then samples the same tokens whatever the model's device.
            logits = output.logits[:, -1, :].float().cpu()
            logits[:, len(self.tokenizer) :] = float("-inf")
        return logits, output.past_key_values


def load_language_model(path: Path | str, device: str = "cpu") -> LanguageModel:
    """A `save_pretrained` causal LM and its tokenizer from `path`; only .safetensors weights
    are loaded (pickled `pytorch_model*.bin` would run code on load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a model directory")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("pytorch_model*.bin")):
            raise ValueError(f"{path} holds only pickled weights, refused: save with safetensors")
        raise FileNotFoundError(f"no .safetensors weights in {path}")
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    model = model.to(pick_device(device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    eos = tokenizer.eos_token_id
    eos = model.config.eos_token_id if eos is None else eos
    return LanguageModel(model, tokenizer, model.config.n_positions, eos, path.resolve().name)


def check_language_model(lm: LanguageModel, steps: int = 3) -> None:
    """A test generation (greedy, `steps` tokens through the cache): finite logits of the
    tokenizer's size; ModelCheckError otherwise."""
    try:
        ids, past = lm.encode(PROBE_PROMPT), None
        for _ in range(steps):
            logits, past = lm.step(ids, past)
            if not torch.isfinite(logits[:, : len(lm.tokenizer)]).all():
                raise ModelCheckError(f"model {lm.version} gives non-finite logits")
            ids = [int(logits.argmax())]
    except ModelCheckError:
        raise
    except Exception as error:
        raise ModelCheckError(f"model {lm.version} cannot generate: {error}") from error


@dataclass(eq=False)  # compared by identity: the engine's lists hold distinct streams
class Stream:
    """One request's generation: its prompt, sampling, deadline, cache and outgoing events."""

    prompt_ids: list[int]
    max_new_tokens: int
    deadline_s: float
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    submitted: float = field(default_factory=time.monotonic)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    past: Any = None
    text_sent: int = 0  # characters of the decoded completion already sent
    on_event: Callable[[dict[str, Any]], None] = lambda event: None

    def __post_init__(self) -> None:
        self.do_sample = any(
            value is not None for value in (self.temperature, self.top_k, self.top_p, self.seed)
        )
        # A generator per request: concurrent streams never draw from each other's RNG.
        self.generator = torch.Generator()
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)

    @property
    def done(self) -> bool:
        """Finished or cancelled."""
        return self.cancelled or self.finish_reason is not None

    def deliver_to(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        """Events for a consumer on `loop` (the engine thread posts them thread-safely)."""
        queue: asyncio.Queue = asyncio.Queue()

        def post(event: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, event)

        self.on_event = post
        return queue


class Engine:
    """One model thread, up to `max_active` streams decoded together (each iteration advances
    each by one token) and at most `max_queue` waiting; more are refused with QueueFull."""

    def __init__(self, lm: LanguageModel, max_active: int = 4, max_queue: int = 8) -> None:
        if max_active < 1 or max_queue < 0:
            raise ValueError("max_active must be >= 1 and max_queue >= 0")
        self.lm = lm
        self.max_active = max_active
        self.max_queue = max_queue
        self.changed = threading.Condition()
        self.waiting: deque[Stream] = deque()
        self.active: list[Stream] = []
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.iterations = 0
        self.submitted = 0
        self.tokens_generated = 0
        self.cancelled = 0
        self.finished = dict.fromkeys(FINISH_REASONS, 0)

    def submit(self, stream: Stream) -> None:
        """Queue `stream`; QueueFull at once when active and waiting streams fill the engine."""
        with self.changed:
            if len(self.active) + len(self.waiting) >= self.max_active + self.max_queue:
                raise QueueFull(f"{len(self.active)} streams active, {len(self.waiting)} waiting")
            self.waiting.append(stream)
            self.submitted += 1
            self.changed.notify_all()

    def cancel(self, stream: Stream) -> None:
        """Stop decoding `stream` (its client left) and free its slot now; no-op once done."""
        with self.changed:
            if stream.done:
                return
            stream.cancelled = True
            self.cancelled += 1
            if stream in self.waiting:
                self.waiting.remove(stream)
            if stream in self.active:
                self.active.remove(stream)
            self.changed.notify_all()

    def wait_until(self, predicate: Callable[[Engine], bool], timeout_s: float = 10.0) -> bool:
        """Block until `predicate(self)` holds (checked at every change); False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout_s)

    @property
    def alive(self) -> bool:
        """The engine thread runs."""
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        """Start the engine thread."""
        self.thread = threading.Thread(target=self._run, name="generate-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """End every stream (finish reason `error`), then stop the thread."""
        with self.changed:
            self.stopping = True
            for stream in list(self.active) + list(self.waiting):
                self._finish(stream, "error")
            self.changed.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self.changed:
                self._expire_waiting()
                while self.waiting and len(self.active) < self.max_active:
                    self.active.append(self.waiting.popleft())
                if self.stopping:
                    return
                if not self.active:
                    # Woken by submit; a waiting stream exists only while all slots are busy.
                    self.changed.wait()
                    continue
                streams = list(self.active)
                self.iterations += 1
            for stream in streams:
                self._advance(stream)

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for stream in [s for s in self.waiting if now - s.submitted > s.deadline_s]:
            self._finish(stream, "deadline")

    def _advance(self, stream: Stream) -> None:
        """One token for `stream`: the prompt's forward first (prefill), then one token each."""
        if stream.done:  # cancelled since this iteration began
            return
        if time.monotonic() - stream.submitted > stream.deadline_s:
            with self.changed:
                self._finish(stream, "deadline")
            return
        try:
            ids = stream.tokens[-1:] if stream.past is not None else stream.prompt_ids
            logits, stream.past = self.lm.step(ids, stream.past)
            token = int(
                next_token(
                    logits,
                    do_sample=stream.do_sample,
                    temperature=stream.temperature or 1.0,
                    top_k=stream.top_k,
                    top_p=stream.top_p,
                    generator=stream.generator,
                )[0]
            )
        except Exception:
            log.exception("generation failed on a stream; it ends with finish reason 'error'")
            with self.changed:
                self._finish(stream, "error")
            return
        with self.changed:
            if stream.done:  # cancelled while its forward ran: the token is dropped
                return
            if token == self.lm.eos_token_id:
                self._finish(stream, "eos")
                return
            self._emit_token(stream, token)
            if len(stream.tokens) >= stream.max_new_tokens:
                self._finish(stream, "length")

    def _emit_token(self, stream: Stream, token: int) -> None:
        stream.tokens.append(token)
        self.tokens_generated += 1
        decoded = self.lm.tokenizer.decode(stream.tokens)
        # A token may end inside a multi-byte character: hold its text until it completes.
        text = "" if decoded.endswith("\ufffd") else decoded[stream.text_sent :]
        stream.text_sent += len(text)
        index = len(stream.tokens) - 1
        stream.on_event({"token": token, "text": text, "index": index})
        self.changed.notify_all()

    def _finish(self, stream: Stream, reason: str) -> None:
        """End `stream` (caller holds the lock): free its slot, send the final event."""
        if stream.done:
            return
        stream.finish_reason = reason
        stream.past = None
        self.finished[reason] += 1
        for queue in (self.active, self.waiting):
            if stream in queue:
                queue.remove(stream)
        stream.on_event(
            {
                "finish_reason": reason,
                "prompt_tokens": len(stream.prompt_ids),
                "completion_tokens": len(stream.tokens),
                "text": self.lm.tokenizer.decode(stream.tokens),
                "seconds": round(time.monotonic() - stream.submitted, 6),
            }
        )
        self.changed.notify_all()
