"""Intake: received instances stored and catalogued, series completed.

Rule: nothing slow and no pixel decoding here; a C-STORE is acknowledged only
after its bytes are durable and its catalog row is committed.
"""
