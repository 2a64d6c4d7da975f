"""Integrations with other libraries' training scripts."""
