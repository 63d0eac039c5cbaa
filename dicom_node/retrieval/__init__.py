"""Retrieval: similar nodules and studies from the hash index, and who may see whom.

Rule: no DICOM networking; results are typed records, labelled by the privacy
policy of whoever receives them.
"""
