"""Processing: the job runner, series qualification and the AI step.

Rule: a step gets what earlier steps produced through the job's context and
never calls a later step; the job runner alone knows the order of steps.
"""
