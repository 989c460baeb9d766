"""The OpenAI-compatible HTTP front door: `/v1/chat/completions`, `/v1/completions`,
`/v1/models` and health, on the same generation calls as the gRPC API (api/calls.py)."""
