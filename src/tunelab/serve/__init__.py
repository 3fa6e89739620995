"""The OpenAI-compatible HTTP server (``tunelab serve``): protocol types, the batching scheduler, the app."""
