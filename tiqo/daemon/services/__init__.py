"""What the routes call, one per capability (text, speech, embeddings, RAG); services never import each other."""
