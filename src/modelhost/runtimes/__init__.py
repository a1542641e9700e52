"""Model runtimes. They are imported only inside worker processes and the CLI's local mode."""
