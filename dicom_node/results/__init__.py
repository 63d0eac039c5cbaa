"""Results: the similar-case SR and key-image montage, kept and delivered by the outbox.

Rule: builders are pure (findings and UIDs in, a dataset out); only the
outbox talks to destinations, through the SCU of ``dicom_node.net``.
"""
