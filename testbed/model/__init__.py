"""The model: schemas for topologies, link profiles and playbooks, and the units they use.

Owns parsing and validation of user input (YAML files, CLI values) into typed
objects, with errors that name the file, line, field, what was expected and
what was found. Must not touch the system: no processes, no netlink, no files
other than the ones it is asked to read.
"""
