"""Standard inference protocols, independent of the transport (REST, gRPC)."""
