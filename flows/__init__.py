"""Prefect flows: the factory's pipeline diagram, composed from tasks."""
