// The fixed conversation the in-browser engine must answer exactly like the PyTorch model. The small
// window (4 sinks + 28) makes the condensed cache fill and evict within the test.
export const LOCAL_CASE = {
  prompts: ["Once upon a time there was a little fox.", "What did the fox see at the river?"],
  maxTokens: 24,
  window: 28,
};
