"""Running a split model across a real network: wire frames, server, client."""
