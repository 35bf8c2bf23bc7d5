// The official openai npm client against `autocontinue serve`: one chat completion, streamed or not.
// Usage: node client.mjs '<JSON>' with {baseURL, apiKey, model, messages, max_tokens, stream, headers, body}.
// Prints one JSON line: {text, finish_reason, chunks, ids, continuation} (the last chunk's continuation), or
// {text, finish_reason, continuation, rounds, stop_cause} (not streamed), or {error: {status, name, message, body}}.
import OpenAI from "openai";

const spec = JSON.parse(process.argv[2]);
const client = new OpenAI({ baseURL: spec.baseURL, apiKey: spec.apiKey, maxRetries: 0 });
const request = { model: spec.model, messages: spec.messages, max_tokens: spec.max_tokens, ...(spec.body || {}) };
const options = spec.headers ? { headers: spec.headers } : undefined;

try {
  if (spec.stream) {
    const stream = await client.chat.completions.create({ ...request, stream: true }, options);
    let text = "";
    let finish = null;
    let chunks = 0;
    const ids = new Set();
    let continuation = null;
    for await (const chunk of stream) {
      chunks += 1;
      ids.add(chunk.id);
      if (chunk.continuation) continuation = chunk.continuation;
      for (const choice of chunk.choices) {
        text += choice.delta.content ?? "";
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    console.log(JSON.stringify({ text, finish_reason: finish, chunks, ids: [...ids], continuation }));
  } else {
    const { data, response } = await client.chat.completions.create(request, options).withResponse();
    console.log(JSON.stringify({
      text: data.choices[0].message.content,
      finish_reason: data.choices[0].finish_reason,
      continuation: data.continuation,
      rounds: response.headers.get("x-autocontinue-rounds"),
      stop_cause: response.headers.get("x-autocontinue-stop-cause"),
    }));
  }
} catch (error) {
  console.log(JSON.stringify({
    error: { status: error.status ?? null, name: error.constructor.name, message: error.message, body: error.error ?? null },
  }));
}
