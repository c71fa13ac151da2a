"""Per-container resource usage: where each container's accounting lives and what it has used."""
