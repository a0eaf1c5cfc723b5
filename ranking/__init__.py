"""Ranking: embeddings, the FAISS index manager, scoring and search."""
