"""Job and export state, broker-neutral: the one home of every state and every transition.

- :mod:`.status`: the states of series, jobs and exports
- :mod:`.filters`: which complete series are analysed (per local AE)
- :mod:`.completion`: a series is complete -> a PENDING job and its outbox message
- :mod:`.outbox`: outbox messages, the relay (PENDING -> QUEUED) and the Dispatcher interface
- :mod:`.analyses`: the job state machine (claim, heartbeat, finish, fail, lost jobs, retry)
- :mod:`.exports`: the export state machine (one row per job and destination, retries, re-export)
- :mod:`.queries`: the read model of series, jobs and exports (command line, admin)

Nothing here imports Celery or the model; dicom_node.pipeline runs the work, worker/ plugs Celery
in as the dispatcher.
"""
