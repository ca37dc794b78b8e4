"""The contract between the model and the node: what the model returns for a series
(:mod:`.result`), the one UID rule of the project (:mod:`.uids`) and the "not for clinical use"
statement (:mod:`.notice`).

Both sides import this package; it imports neither (pydicom and numpy only), so no arrow runs
from the model to the node.
"""
