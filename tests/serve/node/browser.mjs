// The official openai npm client in a real browser: Debian's Chromium, driven by playwright-core. A page of one
// origin (spec.page) loads the package's own ES modules and calls `autocontinue serve` on another, as a chat front end
// in a browser does: preflights, CORS headers and all are the browser's.
// Usage: node browser.mjs '<JSON>' with {chromium, page, baseURL, apiKey, model, messages, max_tokens}.
// Prints one JSON line: {plain, stream, models, wrong_key, console}; a call that failed is {error: {name, status}}.
import { chromium } from "playwright-core";

const spec = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: spec.chromium,
  // As root the sandbox cannot start; the rest keep Chromium from calling out of a machine without internet.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const messages = [];
  page.on("console", (message) => messages.push(message.text()));
  await page.goto(spec.page);
  const result = await page.evaluate(async (spec) => {
    const { default: OpenAI } = await import("/openai/index.mjs");
    const options = { baseURL: spec.baseURL, maxRetries: 0, dangerouslyAllowBrowser: true };
    const client = new OpenAI({ ...options, apiKey: spec.apiKey });
    const request = { model: spec.model, messages: spec.messages, max_tokens: spec.max_tokens };
    const out = {};
    async function attempt(name, call) {
      try {
        out[name] = await call();
      } catch (error) {
        out[name] = { error: { name: error.constructor.name, status: error.status ?? null } };
      }
    }
    await attempt("plain", async () => {
      const { data, response } = await client.chat.completions.create(request).withResponse();
      return {
        text: data.choices[0].message.content,
        rounds: response.headers.get("x-autocontinue-rounds"),
        stop_cause: response.headers.get("x-autocontinue-stop-cause"),
      };
    });
    await attempt("stream", async () => {
      const stream = await client.chat.completions.create({ ...request, stream: true });
      let text = "";
      let continuation = null;
      const ids = new Set();
      for await (const chunk of stream) {
        ids.add(chunk.id);
        if (chunk.continuation) continuation = chunk.continuation;
        for (const choice of chunk.choices) text += choice.delta.content ?? "";
      }
      return { text, continuation, ids: [...ids] };
    });
    await attempt("models", async () => ({ ids: (await client.models.list()).data.map((m) => m.id) }));
    await attempt("wrong_key", () => new OpenAI({ ...options, apiKey: "wrong" }).chat.completions.create(request));
    return out;
  }, spec);
  console.log(JSON.stringify({ ...result, console: messages }));
} finally {
  await browser.close();
}
