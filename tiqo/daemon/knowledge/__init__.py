"""Collections of chunks and vectors in LanceDB: the store, chunking and search."""
