// The default model's file name: setup puts it in models/, the extension also
// looks in ~/.cache/mlx-batch-assistant/models/. A leaf module, so the
// extension host can name it without loading the engine's code.
export const DEFAULT_MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
