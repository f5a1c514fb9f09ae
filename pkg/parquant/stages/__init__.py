"""Stages: stateless commands reading and writing through fsspec URLs (DESIGN.md §4)."""
