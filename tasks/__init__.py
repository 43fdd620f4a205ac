"""Cutover: atomic website deploys over SSH, as a Fabric task suite."""
