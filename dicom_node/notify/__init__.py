"""Notifications of finished jobs: what they say (payload.py), the HL7 v2 messages (hl7v2.py), the
kinds of channel and how each sends (channels.py), and the sender that ``serve`` runs (sender.py).
Their states are in dicom_node.jobs.notifications."""
