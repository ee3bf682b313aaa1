"""The single-process backend: one room kept by this process, on disk.

room.py is the IRoom; store.py makes its history durable (journal, fsync,
folds) off the reactor thread; datafile.py owns the file formats;
history.py is the in-memory index that `get` pages from.
"""
