"""Model worker processes: the only place a model runtime is loaded when serving."""
