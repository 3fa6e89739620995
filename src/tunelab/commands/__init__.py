"""Commands that read a dataset and print or write for the user (above the data and model layers)."""
