"""Kata 6: API gateway with rate limiting and authentication."""
