// The Vercel AI SDK's OpenAI-compatible provider (what opencode and many TypeScript apps use for a custom endpoint)
// against `autocontinue serve`: generateText, or streamText read to its end.
// Usage: node aisdk.mjs '<JSON>' with {baseURL, apiKey, model, prompt, max_tokens, stream}.
// Prints one JSON line: {text, finish_reason, output_tokens, continuation, errors} (continuation: the response
// body's, or the last raw chunk's when streamed; errors: the stream's error parts), or {error: {name, message,
// status, body}}.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, streamText } from "ai";

const spec = JSON.parse(process.argv[2]);
const provider = createOpenAICompatible({
  name: "autocontinue",
  baseURL: spec.baseURL,
  apiKey: spec.apiKey,
  includeUsage: true,
});
const request = { model: provider.chatModel(spec.model), prompt: spec.prompt, maxOutputTokens: spec.max_tokens, maxRetries: 0 };

try {
  if (spec.stream) {
    const result = streamText({ ...request, includeRawChunks: true, onError: () => {} });
    let text = "";
    let continuation = null;
    const errors = [];
    for await (const part of result.fullStream) {
      if (part.type === "text-delta") text += part.text;
      if (part.type === "raw" && part.rawValue && part.rawValue.continuation) continuation = part.rawValue.continuation;
      if (part.type === "error") errors.push(String(part.error?.message ?? part.error));
    }
    const usage = await result.usage;
    console.log(JSON.stringify({
      text, finish_reason: await result.finishReason, output_tokens: usage.outputTokens ?? null, continuation, errors,
    }));
  } else {
    const result = await generateText(request);
    console.log(JSON.stringify({
      text: result.text,
      finish_reason: result.finishReason,
      output_tokens: result.usage.outputTokens ?? null,
      continuation: result.response.body?.continuation ?? null,
      errors: [],
    }));
  }
} catch (error) {
  let body = null;
  try {
    body = JSON.parse(error.responseBody);
  } catch {}
  console.log(JSON.stringify({ error: { name: error.name, message: error.message, status: error.statusCode ?? null, body } }));
}
