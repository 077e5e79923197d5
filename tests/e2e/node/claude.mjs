// The openai-node SDK against a Claude model through promptproxy. Prints one JSON object of
// what it saw; tests/e2e/test_sdk_clients_claude.py asserts on it. Usage:
//   node claude.mjs BASE_URL MODEL
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const messages = [
  { role: "system", content: "You answer in one short paragraph about the weather." },
  { role: "user", content: "What is the weather like in Lisbon?" },
];
const tools = [
  {
    type: "function",
    function: {
      name: "get_weather",
      parameters: {
        type: "object",
        properties: { city: { type: "string" } },
        required: ["city"],
      },
    },
  },
  {
    type: "function",
    function: { name: "get_time", parameters: { type: "object", properties: {} } },
  },
];

const client = new OpenAI({ baseURL, apiKey: "sk-callers-own", maxRetries: 0, timeout: 10000 });
const out = {};

const whole = await client.chat.completions.create({ model, messages });
out.whole = {
  text: whole.choices[0].message.content,
  finish: whole.choices[0].finish_reason,
  model: whole.model,
  usage: whole.usage,
};

const stream = await client.chat.completions.create({
  model,
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text, usage };

const calls = {};
let finish = null;
const toolStream = await client.chat.completions.create({
  model,
  messages,
  tools,
  tool_choice: "required",
  stream: true,
});
for await (const chunk of toolStream) {
  for (const choice of chunk.choices) {
    if (choice.finish_reason) finish = choice.finish_reason;
    for (const call of choice.delta.tool_calls ?? []) {
      const entry = (calls[call.index] ??= { name: "", arguments: "" });
      entry.name += call.function?.name ?? "";
      entry.arguments += call.function?.arguments ?? "";
    }
  }
}
out.tools = { calls, finish };

out.errors = {};
for (const status of [400, 401, 403, 404, 429, 500, 529]) {
  try {
    await client.chat.completions.create(
      { model, messages },
      { headers: { "x-sim-status": String(status) } },
    );
    out.errors[status] = null;
  } catch (error) {
    out.errors[status] = [error.constructor.name, error.status, error.code];
  }
}

// Retried as the SDK retries: twice, waiting what the provider asked for.
const retrying = new OpenAI({ baseURL, apiKey: "sk-callers-own", maxRetries: 2, timeout: 10000 });
out.retried = {};
for (const status of [429, 529]) {
  try {
    await retrying.chat.completions.create(
      { model, messages },
      { headers: { "x-sim-status": String(status), "x-sim-retry-after-ms": "10" } },
    );
  } catch (error) {
    out.retried[status] = error.constructor.name;
  }
}

try {
  const broken = await client.chat.completions.create(
    { model, messages, stream: true },
    { headers: { "x-sim-stream-error": "529" } },
  );
  for await (const _ of broken) {
    // read until the error
  }
  out.streamError = null;
} catch (error) {
  out.streamError = [error.constructor.name, String(error.message)];
}

process.stdout.write(JSON.stringify(out));
