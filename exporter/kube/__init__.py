"""Kubernetes: the only package that imports `kubernetes`. Pods of this node, and the node."""
