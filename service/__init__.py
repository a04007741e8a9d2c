"""abx service: experiment registry, assignment API and the I/O around the pure cores."""
