"""tunelab export: merged Hugging Face models, bitsandbytes 4/8-bit models, and GGUF for llama.cpp and Ollama."""
