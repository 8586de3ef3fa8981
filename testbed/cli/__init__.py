"""CLI: a thin edge. Parses arguments, calls the layers below, prints tables.

Owns no logic that the pytest plugin or the runner does not also use.
"""
