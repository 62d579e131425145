// Ask a GGUF exported by `tunelab export --to gguf` in llama.cpp itself (node-llama-cpp's prebuilt binary).
//   npm i -E node-llama-cpp@3.21.1
//   node examples/llamacpp/ask.mjs out/model.gguf "What is the capital of France?"
// Greedy, with the system message tunelab and the Ollama Modelfile use for SmolLM2.
import {getLlama, LlamaChatSession} from "node-llama-cpp";

const [modelPath, question, system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"] =
  process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never"}); // never compile: the prebuilt binary or nothing
const model = await llama.loadModel({modelPath});
const meta = model.fileInfo.metadata;
console.log(`${meta?.general?.architecture}, ${meta?.tokenizer?.ggml?.tokens?.length} tokens, ` +
  `chat template ${meta?.tokenizer?.chat_template ? "found" : "missing"}`);
const context = await model.createContext({contextSize: 1024});
const session = new LlamaChatSession({contextSequence: context.getSequence(), systemPrompt: system});
console.log(await session.prompt(question, {temperature: 0, maxTokens: 64}));
await model.dispose();
