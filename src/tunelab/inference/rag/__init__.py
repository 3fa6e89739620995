"""Retrieval-augmented generation: ``tunelab rag index`` builds a chromadb index of the user's documents
(``index.py``, ``documents.py``, ``store.py``); ``Retriever`` (``retriever.py``) puts the chunks close enough to a
question into its prompt, for the Python API, chat, predict, eval, serve and the web UI alike."""
