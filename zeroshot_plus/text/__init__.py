"""Templates, class names, descriptors, synonyms, text heads, the LLM client, caption parsing."""
