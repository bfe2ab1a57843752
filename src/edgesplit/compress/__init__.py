"""What crosses the cut: the payload of a route, learned bottlenecks, picture formats, and rate against accuracy."""
