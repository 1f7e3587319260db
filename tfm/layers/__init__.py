"""Shared building blocks of every tfm model family."""
