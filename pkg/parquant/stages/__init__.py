"""Stages: stateless commands reading and writing through fsspec URLs."""
