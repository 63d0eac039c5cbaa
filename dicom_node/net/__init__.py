"""The DICOM network edge: SCPs, handlers, statuses, C-FIND, the similarity AE, the SCU.

Rule: the only package that imports ``pynetdicom``. Handlers stay thin: parse
the request, call one domain function, map exceptions to a named status.
"""
