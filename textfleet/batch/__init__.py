"""Offline batch inference: one model over a dataset, written to part files.

``rows.py`` turns a chunk of input values into output columns with an
``Engine`` (the task decides the columns; a bad row gets an ``error``, never
dropped); ``files.py`` reads inputs and writes parts; ``local.py`` runs the
chunks in this process with a progress line; ``ray_data.py`` runs them on
Ray Data, one engine per actor. The ``textfleet batch`` command
(textfleet/cli/batch.py) picks one. Imports the engine only (and pyarrow).
"""
