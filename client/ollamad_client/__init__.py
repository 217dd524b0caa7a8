"""Thin client for the ollamad daemon (pyzmq and the standard library only)."""
