"""Helpers the tests share: real services, processes, polling."""
