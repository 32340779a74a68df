"""Image sources and decoding, tables, the embedding store, support sets."""
