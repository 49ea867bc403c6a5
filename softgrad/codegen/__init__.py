"""Placeholder until its issue lands; see docs/."""
