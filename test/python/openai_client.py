"""Drives our OpenAI-compatible server with the official `openai` package.

    openai_client.py BASE_URL COMMAND 'JSON-ARGS'

The API key comes from the environment variable MLX_BATCH_API_KEY. Prints one
JSON object on stdout. API errors are printed, not raised:
{"error": "<openai exception class>", "status": <code>, "message": ..., "body": ...}.

Commands (JSON-ARGS):
  chat        {request kwargs}                    -> ChatCompletion.model_dump()
  stream      {request kwargs}                    -> {"chunks", "texts", "finish_reasons", "usage", "role"}
  batch       {"requests": [kwargs...], "concurrent": bool}
                                                  -> {"results": [{"text", "finish_reason", "usage", "elapsed"} | error], "wall"}
  disconnect  {"request": kwargs, "after_chunks": N}
              streams, closes the connection after N content chunks
                                                  -> {"chunks_read", "text"}
  models      {}                                  -> models.list() dump
  model       {"id": ...}                         -> models.retrieve(id) dump
  complete    {request kwargs}                    -> Completion.model_dump() (legacy /v1/completions)
  complete_stream {request kwargs}                -> {"chunks", "texts", "finish_reasons", "usage"}
"""

import asyncio
import json
import os
import sys
import time

import openai


def error_info(e):
    out = {"error": type(e).__name__, "message": str(e)}
    if isinstance(e, openai.APIStatusError):
        out["status"] = e.status_code
        out["body"] = e.body
    elif isinstance(e, openai.APIError):
        out["body"] = e.body
    return out


def client(base_url, **kw):
    return openai.OpenAI(base_url=base_url, api_key=os.environ.get("MLX_BATCH_API_KEY", ""), max_retries=0, timeout=600, **kw)


def async_client(base_url):
    return openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get("MLX_BATCH_API_KEY", ""), max_retries=0, timeout=600)


def chat(base_url, args):
    return client(base_url).chat.completions.create(**args).model_dump()


def collect(stream_chunks, text_of, role_of=None):
    """Joins a stream's chunks per choice index: texts, finish reasons, roles, usage."""
    chunks, texts, finish, usage, role = [], {}, {}, None, {}
    for chunk in stream_chunks:
        chunks.append(chunk.model_dump())
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (text_of(c) or "")
            if role_of and role_of(c):
                role[c.index] = role_of(c)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    n = max(texts.keys(), default=-1) + 1
    out = {
        "chunks": chunks,
        "texts": [texts.get(i, "") for i in range(n)],
        "finish_reasons": [finish.get(i) for i in range(n)],
        "usage": usage,
    }
    if role_of:
        out["roles"] = [role.get(i) for i in range(n)]
    return out


def stream(base_url, args):
    return collect(client(base_url).chat.completions.create(stream=True, **args),
                   lambda c: c.delta.content, lambda c: c.delta.role)


async def one(c, kwargs):
    t0 = time.perf_counter()
    try:
        r = await c.chat.completions.create(**kwargs)
    except openai.APIError as e:
        return error_info(e)
    return {
        "text": r.choices[0].message.content,
        "finish_reason": r.choices[0].finish_reason,
        "usage": r.usage.model_dump() if r.usage else None,
        "elapsed": time.perf_counter() - t0,
    }


async def batch(base_url, args):
    c = async_client(base_url)
    t0 = time.perf_counter()
    if args.get("concurrent", True):
        results = await asyncio.gather(*(one(c, kw) for kw in args["requests"]))
    else:
        results = [await one(c, kw) for kw in args["requests"]]
    wall = time.perf_counter() - t0
    await c.close()
    return {"results": list(results), "wall": wall}


def disconnect(base_url, args):
    read, text = 0, ""
    s = client(base_url).chat.completions.create(stream=True, **args["request"])
    for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            read += 1
            if read >= args.get("after_chunks", 1):
                break
    s.close()  # closes the HTTP connection
    return {"chunks_read": read, "text": text}


def models(base_url, _args):
    return client(base_url).models.list().model_dump()


def model(base_url, args):
    return client(base_url).models.retrieve(args["id"]).model_dump()


def complete(base_url, args):
    return client(base_url).completions.create(**args).model_dump()


def complete_stream(base_url, args):
    return collect(client(base_url).completions.create(stream=True, **args), lambda c: c.text)


def main():
    base_url, command, raw = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "{}"
    args = json.loads(raw)
    fn = {"chat": chat, "stream": stream, "batch": batch, "disconnect": disconnect, "models": models,
          "model": model, "complete": complete, "complete_stream": complete_stream}[command]
    try:
        out = asyncio.run(fn(base_url, args)) if asyncio.iscoroutinefunction(fn) else fn(base_url, args)
    except openai.APIError as e:
        out = error_info(e)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
