"""Keeping what arrives and what is made: the storage layout and its durable writes
(:mod:`.files`), what is kept of an instance (:mod:`.instance`), the index in the database
(:mod:`.index`), rebuilding the index from the files after a crash (:mod:`.recovery`), and the
result folder of each job (:mod:`.results`).
"""
