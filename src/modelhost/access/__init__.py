"""Who may call, and how often: named API keys (keys.py) and the rate limiter (limits.py),
one of each per server, shared by the HTTP gate and the gRPC guard so that one key has one
budget on both ports."""
