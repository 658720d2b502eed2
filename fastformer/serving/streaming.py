"""OpenAI stop sequences and server-sent events for POST /v1/completions with stream: true."""
import json


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """text up to the earliest stop sequence (which is left out, as OpenAI does) and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _event(payload) -> str:
    return f"data: {json.dumps(payload) if not isinstance(payload, str) else payload}\n\n"


def completion_events(generator, prompt: str, settings: dict, stops: list[str], identity: dict):
    """The SSE stream of one completion: a text_completion chunk per piece of text, a last chunk with the
    finish_reason, then "data: [DONE]". Text that could be the start of a stop sequence is held back until
    the next piece shows it is not."""
    hold = max((len(s) for s in stops), default=1) - 1
    text, sent, stopped = "", 0, False

    def chunk(piece: str, reason: str | None = None) -> str:
        return _event({"object": "text_completion", **identity,
                       "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": reason}]})

    for piece in generator.stream(prompt, **settings):
        text += piece
        cut, stopped = cut_at_stop(text, stops)
        safe = len(cut) if stopped else max(sent, len(text) - hold)
        if safe > sent:
            yield chunk(text[sent:safe])
            sent = safe
        if stopped:
            break
    if not stopped and len(text) > sent:
        yield chunk(text[sent:])
    # EOS ended the stream early unless every allowed token was generated.
    reason = "stop" if stopped or generator.count_tokens(prompt + text) - generator.count_tokens(prompt) < \
        settings["max_new_tokens"] else "length"
    yield chunk("", reason)
    yield _event("[DONE]")
