// llama.cpp's next-token probabilities for a token sequence, for moekit's interop test.
// usage: node llama_probs.mjs MODEL.gguf IDS(comma-separated) OUT.f32
// Writes float32 [n_tokens][n_vocab] (softmax of llama.cpp's logits at every position), using
// the CPU backend, an F32 KV cache and flash attention off — the settings ../shared/vectors used.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import {writeFileSync} from "node:fs";

const [path, idsArg, out] = process.argv.slice(2);
if (!path || !idsArg || !out) {
    console.error("usage: node llama_probs.mjs MODEL.gguf IDS OUT.f32");
    process.exit(2);
}
const ids = idsArg.split(",").map(Number);
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: path});
const V = model.tokens.size ?? model.fileInfo.metadata.tokenizer.ggml.tokens.length;
const ctx = await model.createContext({
    contextSize: Math.max(64, ids.length + 8), batchSize: ids.length, flashAttention: false, threads: 2,
    experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
});
const seq = ctx.getSequence();
const opts = {temperature: 1, topK: 0, topP: 1, minP: 0};
const res = await seq.controlledEvaluate(ids.map(t => [t, {generateNext: {probabilities: true, options: opts}}]));
const buf = new Float32Array(ids.length * V);
res.forEach((r, i) => { for (const [tok, p] of r.next.probabilities) buf[i * V + tok] = p; });
writeFileSync(out, Buffer.from(buf.buffer));
console.log(JSON.stringify({n_tokens: ids.length, n_vocab: V}));
process.exit(0);
