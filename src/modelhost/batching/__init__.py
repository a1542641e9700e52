"""Dynamic batching of single-image requests into model batches."""
