"""Triage: the priority of a job (priority.py) from what the node knows of its study (study.py),
the rules admins edit (rules.py)."""
