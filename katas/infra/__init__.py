"""The shared platform every kata stands on: native servers, stacks, chaos, settings."""
