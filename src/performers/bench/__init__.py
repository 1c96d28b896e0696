"""Reproducible measurements that print tables and write JSON."""
