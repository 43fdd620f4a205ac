"""Cutover's server side, standard library only: shipped to each server as one bundle (tasks/agent.py)."""
