"""tunelab eval: generate, score and compare (run.py), perplexity, and the console report."""
