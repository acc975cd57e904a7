"""Adapters of the SIEM kata's domain code to real servers."""
