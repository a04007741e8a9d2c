"""Batch scoring jobs: a file of rows assigned and scored in the workers, chunk by chunk."""
