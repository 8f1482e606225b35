"""HTTP server speaking docs/internal-protocol.md."""
