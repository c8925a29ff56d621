"""The OpenAI-compatible HTTP API: request/response models (protocol), the completion and chat
handlers (serving_*), and the mapping of errors to OpenAI error bodies (errors)."""
